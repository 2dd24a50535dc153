"""Cutting large images into tiles, and the tissue check that skips empty glass.

Part of the index's contract: the same boxes give the same content hashes, and the service cuts
region queries with them (`service/regions.py`) as the indexer cuts the archive.

Tiles start every ``stride`` pixels; when the image does not divide evenly, one more tile is placed
flush with the right or bottom edge so that every pixel is covered (it overlaps its neighbour).
An image no larger than a tile in both directions is one tile: the whole image.

Tissue check (a fixed rule, no Otsu threshold, so its result does not depend on what else is in
the image): on a copy at most 128 px wide, a pixel is *background* when it is bright and nearly
grey (HSV value > 0.8 and saturation < 0.08: empty glass, which is white or light grey in H&E scans)
or nearly black (value < 0.1: scanner borders, pen marks). A tile is kept when its share of
non-background pixels reaches ``min_tissue`` (default 0.25: fat is mostly empty vacuoles and reads
as background, so a higher share would drop adipose tissue). The check only applies to images cut
into several tiles: an image that is one tile was chosen by whoever built the archive, and is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from indexer.index.records import TileBox

_CHECK_SIZE = 128
BRIGHT_VALUE = 0.80
GREY_SATURATION = 0.08
DARK_VALUE = 0.10
# Tile edge in source pixels: the one default of `TilingConfig`, `histosearch index` and `prepare`.
DEFAULT_TILE_SIZE = 512
# Tissue share a tile needs to be kept (see the module doc): the one default of every run.
DEFAULT_MIN_TISSUE = 0.25


@dataclass(frozen=True, slots=True)
class TilingConfig:
    """How to cut images: tile edge and stride in source pixels, and the tissue share to keep."""

    tile_size: int = DEFAULT_TILE_SIZE
    stride: int | None = None
    min_tissue: float = DEFAULT_MIN_TISSUE

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError(f"tile size must be at least 16 px, got {self.tile_size}")
        if self.stride is not None and not self.stride > 0:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must lie in [0, 1], got {self.min_tissue}")

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.tile_size


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Offsets along one axis; the last tile is flush with the edge."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size + 1, stride))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def tile_boxes(width: int, height: int, config: TilingConfig) -> list[TileBox]:
    """(x, y, w, h) boxes covering a ``width`` x ``height`` image, row by row."""
    tile_w = min(width, config.tile_size)
    tile_h = min(height, config.tile_size)
    return [
        (x, y, tile_w, tile_h)
        for y in tile_starts(height, config.tile_size, config.step)
        for x in tile_starts(width, config.tile_size, config.step)
    ]


def tissue_fraction(image: Image.Image) -> float:
    """Share of pixels that are neither empty glass nor black, by the rule in the module doc."""
    small = image.convert("RGB")
    if max(small.size) > _CHECK_SIZE:
        small.thumbnail((_CHECK_SIZE, _CHECK_SIZE))
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    saturation, value = hsv[..., 1], hsv[..., 2]
    background = ((value > BRIGHT_VALUE) & (saturation < GREY_SATURATION)) | (value < DARK_VALUE)
    return float(1.0 - background.mean())


def has_tissue(image: Image.Image, min_tissue: float) -> bool:
    return tissue_fraction(image) >= min_tissue
