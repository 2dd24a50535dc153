"""Schemathesis hooks for the contract test: image parts are real images.

The API says which media types its file parts take (the multipart ``encoding``); these strategies
give schemathesis real tiles in each of them, so a schema-valid request carries a decodable
image, and what the server then refuses is a real disagreement with its description.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.service import samples

_FORMATS: dict[str, tuple[str, dict[str, object]]] = {
    "image/jpeg": ("JPEG", {"quality": 90}),
    "image/png": ("PNG", {}),
    "image/tiff": ("TIFF", {}),
    "image/bmp": ("BMP", {}),
    "image/gif": ("GIF", {}),
    "image/webp": ("WEBP", {"lossless": True}),
}


def _tiles(fmt: str, options: dict[str, object]) -> list[bytes]:
    return [samples.encode(samples.tile_rgb(index), fmt, **options) for index in (0, 57, 131)]


for media_type, (fmt, options) in _FORMATS.items():
    schemathesis.openapi.media_type(media_type, st.sampled_from(_tiles(fmt, options)))
