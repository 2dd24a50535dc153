"""The small JPEG every index item carries for result grids.

Shared by the archive pipeline and the service's uploads, so that a file indexed from disk and the
same file uploaded have the same thumbnail.
"""

from __future__ import annotations

import io
from typing import Final

from PIL import Image

from model.preprocess import resized_pixels

THUMBNAIL_SIDE: Final = 128
# A whole-slide-sized upload is first shrunk by an integer factor (PIL's reducing gap, as in
# `Image.thumbnail`): 3x faster for a 20 Mpx image, and a 128 px preview shows no difference.
THUMBNAIL_REDUCING_GAP: Final = 2.0


def make_thumbnail(rgb: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG for result grids: at most ``side`` pixels on the long edge, never enlarged.

    Resized like the model's input (`model.preprocess.resized_pixels`, bilinear with
    antialiasing) and saved without Huffman optimisation: for small tiles a Lanczos thumbnail
    with an optimised encoding cost more than the network's forward pass, and at 128 px the
    difference does not show.
    """
    scale = min(1.0, side / max(rgb.size))
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    thumbnail = Image.fromarray(resized_pixels(rgb, size, reducing_gap=THUMBNAIL_REDUCING_GAP))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
