"""Turning untrusted upload bytes into an RGB image, or a precise reason why not.

Every check that can be made from the header (format, frame count, pixel count) is made before the
pixels are decoded, so a small file that expands to gigabytes (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from indexer.index.hashing import file_hash
from model.preprocess import UnsupportedPixelsError, upright_rgb
from model.preprocess import to_rgb as model_to_rgb
from service.errors import ErrorCode, ServiceError

# Only plain raster formats: Pillow's other plugins (EPS via Ghostscript, exotic containers) widen
# the attack surface for no benefit to a histology archive.
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
ACCEPTED_MEDIA_TYPES: Final = (
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/bmp",
    "image/gif",
    "image/webp",
)

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


# Each refusal's status: what is wrong with the bytes decides the status, the code says which.
_STATUS_BY_CODE: Final = {
    ErrorCode.EMPTY_FILE: 400,
    ErrorCode.CORRUPT_IMAGE: 400,
    ErrorCode.UPLOAD_TOO_LARGE: 413,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.MULTI_FRAME_IMAGE: 422,
    ErrorCode.UNSUPPORTED_PIXEL_FORMAT: 422,
}


class ImageRejectedError(ServiceError):
    """An upload that cannot be used as a query or an archive item."""

    def __init__(self, reason: ErrorCode, detail: str) -> None:
        super().__init__(_STATUS_BY_CODE[reason], reason, detail)
        self.reason = reason


# EXIF orientations that turn the image a quarter: width and height swap when applied.
_QUARTER_TURNS: Final = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG: Final = 0x0112


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upload decoded to 8-bit RGB, and what it was before conversion (for logs, metadata).

    ``rgb`` may be smaller than the image (a query decoded at reduced size); ``size`` is always
    the upright image's full size.
    """

    rgb: Image.Image
    original_format: str
    original_mode: str
    file_hash: str
    size: tuple[int, int]


def decode_upload(
    data: bytes, *, max_pixels: int, filename: str = "upload", reduce_to: int | None = None
) -> DecodedImage:
    """Decode ``data`` into RGB or raise :class:`ImageRejectedError` naming what is wrong.

    With ``reduce_to``, an image whose shorter side is at least twice that long is decoded at
    reduced size, keeping that side at least ``reduce_to`` pixels: JPEG by decoding fewer DCT
    coefficients (1/2, 1/4 or 1/8 scale: a fraction of the work), other formats shrunk by an
    integer factor right after decoding. For queries only: the model sees a resize to its small
    input either way, and what an archive item stores (size, thumbnail) comes from the full image.
    """
    if not data:
        raise ImageRejectedError(ErrorCode.EMPTY_FILE, f"{filename}: the file is empty")
    image = _open_header(data, filename, max_pixels)
    _check_single_frame(image, filename)
    _check_pixel_count(image, max_pixels, filename)
    full_size = _upright_size(image)
    if reduce_to is not None and image.format == "JPEG":
        image.draft(None, (reduce_to, reduce_to))
    _load_pixels(image, filename, max_pixels)
    # EXIF orientation, then RGB: exactly what the archive pipeline does to a file from disk.
    rgb = _converted(upright_rgb, image, filename)
    size = rgb.size if reduce_to is None else full_size
    if reduce_to is not None and (factor := min(rgb.size) // reduce_to) >= 2:
        rgb = rgb.reduce(factor)
    return DecodedImage(
        rgb=rgb,
        original_format=image.format or "unknown",
        original_mode=image.mode,
        file_hash=file_hash(data),
        size=size,
    )


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError):
        orientation = None
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def decoded_megapixels(data: bytes, *, reduce_to: int | None = None) -> float:
    """Megapixels that decoding ``data`` will produce, from its header alone (0 when it has
    none: such an upload is refused before any pixel is decoded)."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            is_jpeg = image.format == "JPEG"
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 0.0
    scale = 1
    if reduce_to is not None and is_jpeg:
        # The DCT scales draft() picks from: the largest keeping the shorter side >= reduce_to.
        while scale < 8 and min(width, height) // (scale * 2) >= reduce_to:
            scale *= 2
    return width * height / (scale * scale) / 1e6


def _open_header(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise _bomb(filename, max_pixels) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if _is_floating_point_tiff(data):
            # Pillow opens no floating-point RGB TIFF at all: refused as floating-point pixels
            # are wherever Pillow does open them (`model.preprocess.to_rgb`).
            raise ImageRejectedError(
                ErrorCode.UNSUPPORTED_PIXEL_FORMAT,
                f"{filename}: floating-point images have no fixed intensity range; export the "
                "image as 8- or 16-bit",
            ) from error
        if _looks_like_accepted_format(data):
            # Pillow's "cannot identify" names its in-memory file object, which says nothing.
            reason = "" if isinstance(error, UnidentifiedImageError) else f" ({error})"
            raise ImageRejectedError(
                ErrorCode.CORRUPT_IMAGE, f"{filename}: the image header is corrupt{reason}"
            ) from error
        raise ImageRejectedError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"{filename}: not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}",
        ) from error


def _bomb(filename: str, max_pixels: int) -> ImageRejectedError:
    """Pillow's own bomb guard fired (its limit, not ours, is in its message): name ours."""
    return ImageRejectedError(
        ErrorCode.IMAGE_TOO_LARGE,
        f"{filename}: the image has more pixels than the limit of {max_pixels} "
        "(HISTOSEARCH_MAX_IMAGE_PIXELS)",
    )


_SAMPLE_FORMAT_TAG: Final = 339
_IEEE_FLOAT: Final = 3


def _is_floating_point_tiff(data: bytes) -> bool:
    """A TIFF whose first directory declares floating-point samples (SampleFormat 3)."""
    if not data.startswith((b"II*\x00", b"MM\x00*")):
        return False
    stream = io.BytesIO(data)
    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(stream.read(8))
        directory.load(stream)
        sample_format = directory.get(_SAMPLE_FORMAT_TAG)
    except (OSError, SyntaxError, ValueError, KeyError, EOFError):
        return False
    formats = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return _IEEE_FLOAT in formats


def _looks_like_accepted_format(data: bytes) -> bool:
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return is_webp or any(data.startswith(signature) for signature in _SIGNATURES)


def _check_single_frame(image: Image.Image, filename: str) -> None:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageRejectedError(
            ErrorCode.MULTI_FRAME_IMAGE,
            f"{filename}: the image has {frames} frames (animation or multi-page file); "
            "upload a single frame",
        )


def _check_pixel_count(image: Image.Image, max_pixels: int, filename: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejectedError(ErrorCode.CORRUPT_IMAGE, f"{filename}: the image has no pixels")
    if width * height > max_pixels:
        raise ImageRejectedError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"{filename}: the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (HISTOSEARCH_MAX_IMAGE_PIXELS)",
        )


def _load_pixels(image: Image.Image, filename: str, max_pixels: int) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise _bomb(filename, max_pixels) from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise ImageRejectedError(
            ErrorCode.CORRUPT_IMAGE, f"{filename}: the image data is truncated or corrupt ({error})"
        ) from error


def to_rgb(image: Image.Image, filename: str = "upload") -> Image.Image:
    """8-bit RGB by the rule every path into the model shares (`model.preprocess.to_rgb`).

    Pixels that rule refuses (floating-point data, modes with no RGB meaning) are an
    :class:`ImageRejectedError` with reason ``UNSUPPORTED_PIXEL_FORMAT``.
    """
    return _converted(model_to_rgb, image, filename)


def _converted(
    convert: Callable[[Image.Image], Image.Image], image: Image.Image, filename: str
) -> Image.Image:
    try:
        return convert(image)
    except UnsupportedPixelsError as error:
        raise ImageRejectedError(
            ErrorCode.UNSUPPORTED_PIXEL_FORMAT, f"{filename}: {error}"
        ) from error
