"""Turning untrusted upload bytes into an RGB image, or a precise reason why not.

Every check that can be made from the header (format, frame count, pixel count) is made before the
pixels are decoded, so a small file that expands to gigabytes (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from PIL import Image, UnidentifiedImageError

from indexer.index.hashing import file_hash
from model.preprocess import UnsupportedPixelsError, upright_rgb
from model.preprocess import to_rgb as model_to_rgb

# Only plain raster formats: Pillow's other plugins (EPS via Ghostscript, exotic containers) widen
# the attack surface for no benefit to a histology archive.
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")

# Leading bytes of the accepted formats: a file that starts like one of them but fails to open is
# corrupt (400), anything else is simply not a supported image (415).
_SIGNATURES: Final = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"GIF87a",
    b"GIF89a",
)


class RejectionReason(StrEnum):
    """Why an upload was refused; each value is a stable, machine-readable error code."""

    EMPTY = "empty_file"
    TOO_MANY_BYTES = "upload_too_large"
    TOO_MANY_PIXELS = "image_too_large"
    NOT_AN_IMAGE = "unsupported_media_type"
    CORRUPT = "corrupt_image"
    MULTI_FRAME = "multi_frame_image"
    UNSUPPORTED_PIXELS = "unsupported_pixel_format"


_STATUS_BY_REASON: Final = {
    RejectionReason.EMPTY: 400,
    RejectionReason.CORRUPT: 400,
    RejectionReason.TOO_MANY_BYTES: 413,
    RejectionReason.TOO_MANY_PIXELS: 413,
    RejectionReason.NOT_AN_IMAGE: 415,
    RejectionReason.MULTI_FRAME: 422,
    RejectionReason.UNSUPPORTED_PIXELS: 422,
}


class ImageRejectedError(ValueError):
    """An upload that cannot be used as a query or an archive item."""

    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def status_code(self) -> int:
        return _STATUS_BY_REASON[self.reason]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upload decoded to 8-bit RGB, and what it was before conversion (for logs, metadata)."""

    rgb: Image.Image
    original_format: str
    original_mode: str
    file_hash: str

    @property
    def size(self) -> tuple[int, int]:
        width, height = self.rgb.size
        return width, height


def decode_upload(data: bytes, *, max_pixels: int, filename: str = "upload") -> DecodedImage:
    """Decode ``data`` into RGB or raise :class:`ImageRejectedError` naming what is wrong."""
    if not data:
        raise ImageRejectedError(RejectionReason.EMPTY, f"{filename}: the file is empty")
    image = _open_header(data, filename)
    _check_single_frame(image, filename)
    _check_pixel_count(image, max_pixels, filename)
    _load_pixels(image, filename)
    # EXIF orientation, then RGB: exactly what the archive pipeline does to a file from disk.
    rgb = _converted(upright_rgb, image, filename)
    return DecodedImage(
        rgb=rgb,
        original_format=image.format or "unknown",
        original_mode=image.mode,
        file_hash=file_hash(data),
    )


def _open_header(data: bytes, filename: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageRejectedError(RejectionReason.TOO_MANY_PIXELS, f"{filename}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if _looks_like_accepted_format(data):
            raise ImageRejectedError(
                RejectionReason.CORRUPT, f"{filename}: the image header is corrupt ({error})"
            ) from error
        raise ImageRejectedError(
            RejectionReason.NOT_AN_IMAGE,
            f"{filename}: not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}",
        ) from error


def _looks_like_accepted_format(data: bytes) -> bool:
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return is_webp or any(data.startswith(signature) for signature in _SIGNATURES)


def _check_single_frame(image: Image.Image, filename: str) -> None:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageRejectedError(
            RejectionReason.MULTI_FRAME,
            f"{filename}: the image has {frames} frames (animation or multi-page file); "
            "upload a single frame",
        )


def _check_pixel_count(image: Image.Image, max_pixels: int, filename: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejectedError(RejectionReason.CORRUPT, f"{filename}: the image has no pixels")
    if width * height > max_pixels:
        raise ImageRejectedError(
            RejectionReason.TOO_MANY_PIXELS,
            f"{filename}: the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}",
        )


def _load_pixels(image: Image.Image, filename: str) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageRejectedError(RejectionReason.TOO_MANY_PIXELS, f"{filename}: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise ImageRejectedError(
            RejectionReason.CORRUPT, f"{filename}: the image data is truncated or corrupt ({error})"
        ) from error


def to_rgb(image: Image.Image, filename: str = "upload") -> Image.Image:
    """8-bit RGB by the rule every path into the model shares (`model.preprocess.to_rgb`).

    Pixels that rule refuses (floating-point data, modes with no RGB meaning) are an
    :class:`ImageRejectedError` with reason ``UNSUPPORTED_PIXELS``.
    """
    return _converted(model_to_rgb, image, filename)


def _converted(
    convert: Callable[[Image.Image], Image.Image], image: Image.Image, filename: str
) -> Image.Image:
    try:
        return convert(image)
    except UnsupportedPixelsError as error:
        raise ImageRejectedError(
            RejectionReason.UNSUPPORTED_PIXELS, f"{filename}: {error}"
        ) from error
