"""From PIL images to the tensors a model expects, as its card describes, and device choice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.card import ModelCard


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are laid on white, like a slide's background."""
    if image.mode == "RGB":
        return image
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        # 16-bit and float greyscale: rescale to 8 bits rather than clip.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in [0, 1] (bilinear resize with antialiasing)."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    array = np.asarray(rgb, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


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
