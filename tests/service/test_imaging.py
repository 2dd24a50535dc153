"""Decoding crafted bytes: bad files are refused with a reason, odd modes convert properly."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from indexer.index.thumbnails import make_thumbnail
from service.errors import ErrorCode
from service.imaging import (
    ImageRejectedError,
    decode_upload,
    to_rgb,
)
from tests.service import samples

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def tile() -> Image.Image:
    return samples.tile_rgb(0)


def rejection(data: bytes, max_pixels: int = LIMIT) -> ImageRejectedError:
    with pytest.raises(ImageRejectedError) as caught:
        decode_upload(data, max_pixels=max_pixels, filename="query.png")
    return caught.value


def mean_abs_difference(first: Image.Image, second: Image.Image) -> float:
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    return float(np.abs(a - b).mean())


def test_decode_rejects_empty_file() -> None:
    error = rejection(b"")
    assert error.reason is ErrorCode.EMPTY_FILE
    assert error.status_code == 400
    assert "empty" in error.detail


def test_decode_rejects_truncated_jpeg(tile: Image.Image) -> None:
    error = rejection(samples.truncated(samples.encode(tile, "JPEG")))
    assert error.reason is ErrorCode.CORRUPT_IMAGE
    assert error.status_code == 400


def test_decode_rejects_truncated_png(tile: Image.Image) -> None:
    error = rejection(samples.truncated(samples.encode(tile, "PNG")))
    assert error.reason is ErrorCode.CORRUPT_IMAGE


def test_decode_rejects_corrupt_jpeg(tile: Image.Image) -> None:
    error = rejection(samples.corrupt_jpeg(tile))
    assert error.reason is ErrorCode.CORRUPT_IMAGE


def test_decode_rejects_non_image_as_unsupported_media_type() -> None:
    error = rejection(samples.NOT_AN_IMAGE)
    assert error.reason is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert error.status_code == 415
    assert "JPEG" in error.detail


def test_decode_refuses_formats_outside_the_allow_list(tile: Image.Image) -> None:
    error = rejection(samples.encode(tile, "PPM"))
    assert error.reason is ErrorCode.UNSUPPORTED_MEDIA_TYPE


def test_decode_refuses_decompression_bomb_before_decoding() -> None:
    bomb = samples.png_bomb(12_000)
    assert len(bomb) < 1_000_000
    error = rejection(bomb)
    assert error.reason is ErrorCode.IMAGE_TOO_LARGE
    assert error.status_code == 413
    assert "144000000" in error.detail


def test_decode_refuses_header_claiming_billions_of_pixels() -> None:
    # Far past Pillow's own bomb threshold: refused from the header alone.
    header_only = samples.png_from_rows(100_000, 100_000, 8, 0, zlib.compress(b""))
    error = rejection(header_only)
    assert error.reason is ErrorCode.IMAGE_TOO_LARGE


def test_a_bomb_past_pillows_own_guard_is_refused_naming_the_configured_limit() -> None:
    # 14,000^2 = 196 MP: past Pillow's 178,956,970, which raises before our check can run.
    error = rejection(samples.png_bomb(14_000))
    assert error.reason is ErrorCode.IMAGE_TOO_LARGE and error.status_code == 413
    assert "40000000" in error.detail and "HISTOSEARCH_MAX_IMAGE_PIXELS" in error.detail
    assert "178956970" not in error.detail


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_floating_point_rgb_tiff_is_a_422_unsupported_pixel_format(dtype: type) -> None:
    import tifffile

    buffer = io.BytesIO()
    pixels: np.ndarray = np.random.default_rng(0).random((16, 16, 3)).astype(dtype)
    tifffile.imwrite(buffer, pixels, photometric="rgb")
    error = rejection(buffer.getvalue())
    assert error.reason is ErrorCode.UNSUPPORTED_PIXEL_FORMAT and error.status_code == 422
    assert "floating-point" in error.detail and "BytesIO" not in error.detail


def test_a_corrupt_header_names_no_in_memory_object() -> None:
    error = rejection(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert error.reason is ErrorCode.CORRUPT_IMAGE
    assert "BytesIO" not in error.detail and "<" not in error.detail


def test_decode_refuses_images_over_the_pixel_limit(tile: Image.Image) -> None:
    error = rejection(samples.encode(tile, "PNG"), max_pixels=100 * 100)
    assert error.reason is ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("maker", [samples.gif_two_frames, samples.tiff_two_pages])
def test_decode_refuses_multi_frame_images(tile: Image.Image, maker: object) -> None:
    assert callable(maker)
    error = rejection(maker(tile))
    assert error.reason is ErrorCode.MULTI_FRAME_IMAGE
    assert error.status_code == 422
    assert "2 frames" in error.detail


def test_decode_refuses_floating_point_pixels(tile: Image.Image) -> None:
    error = rejection(samples.float_tiff(tile))
    assert error.reason is ErrorCode.UNSUPPORTED_PIXEL_FORMAT
    assert error.status_code == 422


def test_sixteen_bit_rgb_png_decodes_to_the_same_pixels(tile: Image.Image) -> None:
    decoded = decode_upload(samples.png_rgb16(tile), max_pixels=LIMIT)
    assert decoded.rgb.mode == "RGB"
    assert mean_abs_difference(decoded.rgb, tile) < 0.01


def test_sixteen_bit_gray_png_is_scaled_not_clipped(tile: Image.Image) -> None:
    decoded = decode_upload(samples.png_gray16(tile), max_pixels=LIMIT)
    assert decoded.original_mode.startswith("I")
    expected = tile.convert("L").convert("RGB")
    assert mean_abs_difference(decoded.rgb, expected) < 0.01


def test_cmyk_jpeg_converts_close_to_the_rgb_original(tile: Image.Image) -> None:
    decoded = decode_upload(
        samples.encode(tile.convert("CMYK"), "JPEG", quality=95), max_pixels=LIMIT
    )
    assert decoded.original_mode == "CMYK"
    assert mean_abs_difference(decoded.rgb, tile) < 6.0


def test_grayscale_and_palette_images_convert_to_rgb(tile: Image.Image) -> None:
    for image, fmt in [(tile.convert("L"), "PNG"), (tile.convert("P"), "PNG"), (tile, "GIF")]:
        decoded = decode_upload(samples.encode(image, fmt), max_pixels=LIMIT)
        assert decoded.rgb.mode == "RGB"
        assert decoded.rgb.size == tile.size


def test_transparent_pixels_become_white_background(tile: Image.Image) -> None:
    decoded = decode_upload(samples.rgba_half_transparent(tile), max_pixels=LIMIT)
    pixels = np.asarray(decoded.rgb)
    assert (pixels[:, : tile.width // 2] == 255).all()
    assert np.array_equal(pixels[:, tile.width // 2 :], np.asarray(tile)[:, tile.width // 2 :])


def test_original_tiff_tile_decodes_unchanged() -> None:
    path, _, _ = samples.kather_tiles()[3]
    decoded = decode_upload(path.read_bytes(), max_pixels=LIMIT)
    assert decoded.original_format == "TIFF"
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(samples.tile_rgb(3)))


def test_equal_bytes_give_equal_file_hashes(tile: Image.Image) -> None:
    data = samples.encode(tile, "PNG")
    first = decode_upload(data, max_pixels=LIMIT)
    second = decode_upload(bytes(data), max_pixels=LIMIT)
    other = decode_upload(samples.encode(tile.rotate(90), "PNG"), max_pixels=LIMIT)
    assert first.file_hash == second.file_hash != other.file_hash


def test_to_rgb_keeps_rgb_images_as_they_are(tile: Image.Image) -> None:
    assert to_rgb(tile) is tile


def test_thumbnail_is_a_small_jpeg(tile: Image.Image) -> None:
    thumbnail = make_thumbnail(tile)
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= 128
