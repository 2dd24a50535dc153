"""Upload bodies for validation tests: real tiles re-encoded in awkward ways, and bad bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from support.kather import KATHER as KATHER
from support.kather import encode as encode
from support.kather import kather_tiles as kather_tiles
from support.kather import tile_rgb as tile_rgb


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for layouts Pillow cannot write (16-bit RGB, bombs)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


def png_rgb16(image: Image.Image) -> bytes:
    """The same pixels as 16-bit-per-channel RGB (each 8-bit value v becomes v * 257)."""
    wide = np.asarray(image, dtype=np.uint16) * 257
    height, width, _ = wide.shape
    scanlines = b"".join(b"\x00" + wide[row].astype(">u2").tobytes() for row in range(height))
    return png_from_rows(width, height, 16, 2, zlib.compress(scanlines))


def png_gray16(image: Image.Image) -> bytes:
    wide = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(wide), "PNG")


def png_bomb(side: int = 12_000) -> bytes:
    """A valid greyscale PNG of side x side black pixels that compresses to a few hundred KiB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_from_rows(side, side, 8, 0, body)


def gif_two_frames(image: Image.Image) -> bytes:
    frames = [image.convert("P"), image.rotate(90).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def tiff_two_pages(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", save_all=True, append_images=[image.rotate(90)])
    return buffer.getvalue()


def rgba_half_transparent(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, dtype=np.uint8)
    alpha[:, : image.width // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def float_tiff(image: Image.Image) -> bytes:
    return encode(image.convert("F"), "TIFF")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_jpeg(image: Image.Image) -> bytes:
    data = bytearray(encode(image, "JPEG", quality=90))
    # Keep the JPEG signature and first segment, scramble everything after it.
    rng = np.random.default_rng(0)
    data[20:] = rng.integers(0, 256, len(data) - 20, dtype=np.uint8).tobytes()
    return bytes(data)


NOT_AN_IMAGE = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n"
