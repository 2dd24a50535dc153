"""Whole-slide images made for tests and benchmarks: real H&E tiles laid as a mosaic on glass.

`write_mosaic_slide` writes a multi-resolution tiled TIFF with tifffile, one IFD per level (level 0
first, reduced levels marked as such), JPEG tiles, and resolution tags in pixels per centimetre so
that OpenSlide reports ``openslide.mpp-x`` (vendor ``generic-tiff``). Every level is generated tile
by tile from the mosaic's description, never held whole, so slides of 50,000 px and more can be
written in little memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image

from support.data import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"
GLASS = (242, 242, 244)
TIFF_TILE = 256

Cell = tuple[int, int]


@dataclass(slots=True)
class Mosaic:
    """Cells of ``cell`` level-0 pixels; ``tissue`` maps (col, row) to the image laid there.

    Many cells may share one image object: scaled copies are cached per image and level, so a
    50,000 px mosaic of a few hundred distinct tiles stays small in memory.
    """

    width: int
    height: int
    cell: int
    tissue: Mapping[Cell, Image.Image]
    _scaled: dict[tuple[float, int], npt.NDArray[np.uint8]] = field(default_factory=dict)

    def scaled_cell(self, downsample: float, cell: Cell) -> npt.NDArray[np.uint8]:
        image = self.tissue[cell]
        key = (downsample, id(image))
        if key not in self._scaled:
            side = max(1, round(self.cell / downsample))
            scaled = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
            self._scaled[key] = np.asarray(scaled)
        return self._scaled[key]

    def region(self, downsample: float, x: int, y: int, size: int) -> npt.NDArray[np.uint8]:
        """A ``size`` x ``size`` tile of the level with this downsample, at level pixel (x, y)."""
        tile = np.empty((size, size, 3), dtype=np.uint8)
        tile[...] = GLASS
        cell_side = self.cell / downsample
        first_col, last_col = int(x // cell_side), int((x + size - 1) // cell_side)
        first_row, last_row = int(y // cell_side), int((y + size - 1) // cell_side)
        for row in range(first_row, last_row + 1):
            for col in range(first_col, last_col + 1):
                if (col, row) not in self.tissue:
                    continue
                pixels = self.scaled_cell(downsample, (col, row))
                left, top = round(col * cell_side) - x, round(row * cell_side) - y
                src_x, src_y = max(0, -left), max(0, -top)
                dst_x, dst_y = max(0, left), max(0, top)
                w = min(pixels.shape[1] - src_x, size - dst_x)
                h = min(pixels.shape[0] - src_y, size - dst_y)
                if w > 0 and h > 0:
                    tile[dst_y : dst_y + h, dst_x : dst_x + w] = pixels[
                        src_y : src_y + h, src_x : src_x + w
                    ]
        return tile


def _level_tiles(mosaic: Mosaic, downsample: float, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    height, width = shape
    for y in range(0, height, TIFF_TILE):
        for x in range(0, width, TIFF_TILE):
            tile = mosaic.region(downsample, x, y, TIFF_TILE)
            # Pixels past the level's edge are padding; make them glass like the border.
            tile[max(0, height - y) :, :] = GLASS
            tile[:, max(0, width - x) :] = GLASS
            yield tile


def write_mosaic_slide(
    path: Path,
    mosaic: Mosaic,
    mpp: float | None,
    *,
    quality: int = 90,
    max_levels: int | None = None,
) -> Path:
    """Write the mosaic as a pyramidal JPEG-tiled TIFF; ``mpp=None`` leaves out resolution tags.

    Levels halve until one fits a TIFF tile, or stop after ``max_levels``.
    """
    levels, downsample = [], 1
    while True:
        shape = (max(1, mosaic.height // downsample), max(1, mosaic.width // downsample))
        levels.append((downsample, shape))
        if max(shape) <= TIFF_TILE or len(levels) == max_levels:
            break
        downsample *= 2
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for number, (factor, shape) in enumerate(levels):
            per_cm = None if mpp is None else 1e4 / (mpp * factor)
            writer.write(
                _level_tiles(mosaic, float(factor), shape),
                shape=(*shape, 3),
                dtype=np.uint8,
                tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=0 if number == 0 else 1,
                metadata=None,
                resolution=None if per_cm is None else (per_cm, per_cm),
                resolutionunit=None if per_cm is None else "CENTIMETER",
            )
    return path


def kather_images(count: int, classes: tuple[str, ...] = ()) -> list[Image.Image]:
    """``count`` real Kather 2016 H&E tiles (tissue classes only, no empty glass), cycling."""
    folders = [
        folder
        for folder in sorted(KATHER.iterdir())
        if folder.is_dir()
        and folder.name not in ("08_EMPTY", "07_ADIPOSE")
        and (not classes or folder.name in classes)
    ]
    paths = [path for folder in folders for path in sorted(folder.glob("*.tif"))]
    if not paths:
        raise FileNotFoundError(f"no Kather 2016 tiles under {KATHER}")
    chosen = [paths[(number * 7) % len(paths)] for number in range(count)]
    images = []
    for path in chosen:
        with Image.open(path) as opened:
            images.append(opened.convert("RGB"))
    return images


def checkerboard_mosaic(width: int, height: int, cell: int, tissue_cells: list[Cell]) -> Mosaic:
    """A mosaic with a Kather tile in each of ``tissue_cells``, glass elsewhere."""
    images = kather_images(len(tissue_cells))
    return Mosaic(width, height, cell, dict(zip(tissue_cells, images, strict=True)))
