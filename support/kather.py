"""Real Kather 2016 tiles from the shared data: the sample images of tests and benchmarks."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from support.data import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


def kather_tiles() -> list[tuple[Path, str, str]]:
    """(path, label, group) of every tile in the Kather 2016 texture set, in file order."""
    rows = (KATHER / "labels.csv").read_text().splitlines()[1:]
    tiles = []
    for row in rows:
        path, label, group = row.split(",")
        tiles.append((KATHER / path, label, group))
    return tiles


def tile_rgb(index: int = 0) -> Image.Image:
    path, _, _ = kather_tiles()[index]
    with Image.open(path) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
