"""From PIL images to the tensors a model expects, as its card describes, and device choice."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps

from model.card import ModelCard


class UnsupportedPixelsError(ValueError):
    """Pixels with no single meaning as 8-bit RGB (floating-point data, unknown modes)."""


_SIXTEEN_BIT_GRAY_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_MODES_WITH_ALPHA: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_BACKGROUND_WHITE: Final = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any single-frame mode, keeping what the pixels mean.

    The one rule for every path into the model (archive indexing, uploads, training, baselines):
    16-bit grey is scaled by 1/257 (0..65535 onto 0..255, never clipped and never stretched to the
    image's own range, so equal files give equal pixels), CMYK goes through its embedded ICC profile
    when it has one, transparent pixels are laid on white (the slide background), and
    floating-point images are refused with :class:`UnsupportedPixelsError`, having no fixed range.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_GRAY_MODES:
        return _sixteen_bit_gray_to_rgb(image)
    if mode == "F":
        raise UnsupportedPixelsError(
            "32-bit floating-point images have no fixed intensity range; "
            "export the image as 8- or 16-bit"
        )
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in _MODES_WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        return _flatten_on_white(image.convert("RGBA"))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise UnsupportedPixelsError(f"cannot convert {mode} pixels to RGB") from error


def upright_rgb(image: Image.Image) -> Image.Image:
    """The loaded image turned as its EXIF orientation says, then 8-bit RGB by `to_rgb`.

    The one decode rule of the project: archive files, uploads, training and evaluation images
    all pass through it, so every caller sees the same pixels. Raises `UnsupportedPixelsError`
    (a ValueError) for pixels `to_rgb` refuses.
    """
    return to_rgb(ImageOps.exif_transpose(image) or image)


def open_upright_rgb(path: str | Path) -> Image.Image:
    """Decode an image file from disk by the project's one rule (`upright_rgb`)."""
    with Image.open(path) as opened:
        opened.load()
        return upright_rgb(opened)


def _sixteen_bit_gray_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    # 16-bit data spans 0..65535; dividing by 257 maps it exactly onto 0..255.
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    # An embedded ICC profile says how the inks map to colour; without it, fall back to the naive
    # subtractive formula, which is what every viewer does too.
    profile_bytes = image.info.get("icc_profile")
    if profile_bytes:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
            target = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("RGB")


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    # Slide background is white, so transparent regions become glass rather than black tissue.
    background = Image.new("RGB", rgba.size, _BACKGROUND_WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


# Images up to this many pixels (tiles) are resized by torch's 8-bit kernel, larger ones by PIL:
# measured here, torch takes 0.11 ms for 224 px -> 64 px (PIL 0.25 ms) and 0.3 ms from 512 px
# (PIL 0.8 ms), but falls behind PIL from about 1024 px up.
_TORCH_RESIZE_MAX_PIXELS: Final = 512 * 512


def resized_pixels(
    image: Image.Image, size: tuple[int, int], *, reducing_gap: float | None = None
) -> npt.NDArray[np.uint8]:
    """(height, width, 3) 8-bit RGB of ``image`` resized to ``size`` (width, height).

    Bilinear with antialiasing, like the model's input (`image_to_tensor`). A ``reducing_gap``
    lets PIL first shrink a large image by an integer factor (much faster, slightly different
    pixels: for display, never for the model).
    """
    planes = _resized_planes(to_rgb(image), size, reducing_gap)
    return np.ascontiguousarray(planes.permute(1, 2, 0).numpy())


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [0, 1] (bilinear resize with antialiasing)."""
    return _resized_planes(to_rgb(image), (size, size)).float().div_(255.0)


def _resized_planes(
    rgb: Image.Image, size: tuple[int, int], reducing_gap: float | None = None
) -> torch.Tensor:
    """(3, height, width) uint8 planes of an RGB image resized to ``size`` (width, height).

    PIL's bilinear filter and torch's 8-bit antialiased one agree to one grey level, so which
    one runs (the faster for the image's size) makes no difference to a descriptor.
    """
    if rgb.size != size and rgb.width * rgb.height > _TORCH_RESIZE_MAX_PIXELS:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=reducing_gap)
    planes = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
    if rgb.size == size:
        return planes
    # (h, w, 3) memory seen as (1, 3, h, w) is channels-last: the layout of torch's fast kernel.
    resized = F.interpolate(
        planes.unsqueeze(0), size=(size[1], size[0]), mode="bilinear", antialias=True
    )
    return resized[0]


def normalize(images: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> normalised with the card's mean and std."""
    mean = torch.tensor(card.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(card.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size), antialiased like the PIL path."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def preprocess(images: Sequence[Image.Image], card: ModelCard) -> torch.Tensor:
    """PIL images of any mode and size -> (N, 3, S, S) float32, RGB, resized, normalised."""
    if not images:
        return torch.empty(0, 3, card.input_size, card.input_size)
    batch = torch.stack([image_to_tensor(image, card.input_size) for image in images])
    return normalize(batch, card)


def select_device(preference: str = "auto") -> torch.device:
    """ "auto" picks CUDA when available, else CPU; "cpu", "cuda" or "cuda:N" are taken as asked."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
    return device


def _cpu_flag(name: str) -> bool | None:
    """A CPU capability probe of ``torch.cpu`` (private, so not in every torch): None if absent."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if callable(probe) else None


def bfloat16_trains_faster(device: torch.device) -> bool:
    """Whether bfloat16 mixed precision trains faster than float32 on ``device``: a CUDA GPU
    with bfloat16 support, or a CPU with AMX tile units. A CPU with AVX512-BF16 alone runs
    bfloat16 through oneDNN, but slower than float32 (0.79-0.88x the training images/s,
    ``python -m benchmarks.quality.precision``)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            onednn_runs_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            return False
        return onednn_runs_bf16 and bool(_cpu_flag("_is_amx_tile_supported"))
    return False


def cpu_features() -> dict[str, object]:
    """What this CPU offers torch: its vector capability, its bfloat16 instructions and units,
    and its core count. Training records them beside its images per second, since they decide
    that speed and whether bfloat16 pays (`bfloat16_trains_faster`). A flag this torch cannot
    tell is None."""
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": _cpu_flag("_is_avx512_bf16_supported"),
        "amx": _cpu_flag("_is_amx_tile_supported"),
        "cores": os.cpu_count(),
    }


def select_precision(preference: str, device: torch.device) -> torch.dtype:
    """ "auto" picks bfloat16 where it trains faster than float32 (`bfloat16_trains_faster`), else
    float32; "bf16" and "fp32" are taken as asked."""
    if preference == "fp32":
        return torch.float32
    if preference == "bf16":
        return torch.bfloat16
    if preference == "auto":
        return torch.bfloat16 if bfloat16_trains_faster(device) else torch.float32
    raise ValueError(f"precision must be auto, bf16 or fp32, got {preference!r}")
