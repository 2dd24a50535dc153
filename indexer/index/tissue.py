"""Where the tissue is on a whole-slide image or a region of one, from a low-resolution overview.

One rule for the archive and its queries: the indexer masks each slide with it before reading
tiles (`indexer.ingest.slides`), and the service masks a region query with it before cutting the
region into tiles (`service.regions`, by `image_tissue_mask`), so a query tile is searched when
the same tile of a slide would have been indexed.

The slide is read at a coarse ``downsample`` (level-0 pixels per mask pixel), from the pyramid level
nearest below it and in bounded regions, so the mask never costs a full-resolution read and its
memory does not grow with the slide. Each mask pixel is then classified:

- **glass** is bright and nearly grey, tissue is stained: a pixel is tissue when its HSV saturation
  is above a threshold found by Otsu's method on the slide's own saturation histogram, clipped to
  [`MIN_SATURATION`, `MAX_SATURATION`] so that a slide that is nearly all glass (Otsu would then
  split the glass's noise) or nearly all tissue (Otsu would split pale stroma from dense nuclei)
  still gets a sensible cut;
- **dark** pixels (HSV value below `DARK_VALUE`: black pen, scanner borders, folds full of debris)
  are never tissue;
- **pen marks** in green and cyan ink (hue between `PEN_HUE_DEGREES`) are never tissue: H&E stains
  pink to purple and has no green. Blue and red inks overlap haematoxylin and eosin in hue and are
  not told apart by colour; they are kept as tissue;
- **holes and specks**: a morphological opening (3x3) removes isolated specks of dust one or two
  mask pixels wide, then a closing (3x3) fills pinholes inside tissue of the same size (nuclei gaps,
  small vacuoles at overview scale). Larger holes (lumens, fat) stay background, so a tile mostly
  over a lumen is judged by the tissue share like any other tile.

A tile is read at full resolution only when the share of tissue mask pixels under it reaches
``min_tissue``. The mask has `MASK_CELLS_PER_TILE` pixels along a tile's edge. A region query's
Otsu cut comes from the region's own histogram, not its slide's: the clip to
[`MIN_SATURATION`, `MAX_SATURATION`] keeps the two cuts close.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from indexer.index.records import TileBox
from model.preprocess import to_rgb

if TYPE_CHECKING:
    from openslide import OpenSlide

# Measured on a mosaic of Kather 2016 tiles on glass: glass has a saturation of about 0.01 at
# overview scale, pale mucosa a median of 0.17, and Otsu's cut landed at 0.27, which dropped it.
MIN_SATURATION: Final = 0.04
MAX_SATURATION: Final = 0.10
DARK_VALUE: Final = 0.20
PEN_HUE_DEGREES: Final = (70.0, 200.0)
PEN_MIN_SATURATION: Final = 0.15
# The overview is read in regions of at most this many mask pixels a side, and of at most
# `MAX_READ_SIDE` pixels of the level they come from (a slide with no reduced levels is read from
# level 0 in 2048 px pieces, 16 MB each), so memory stays bounded whatever the pyramid.
OVERVIEW_REGION: Final = 512
MAX_READ_SIDE: Final = 2048
# A level whose downsample exceeds the wanted one by less than this still counts as "at or below":
# pyramids of odd-sized slides report downsamples such as 4.0003 for a nominal 4.
DOWNSAMPLE_TOLERANCE: Final = 1e-3

# The tissue mask has this many pixels along a tile's edge: fine enough that a tile's tissue share
# is measured on 256 mask pixels, coarse enough that a 100,000 px slide's mask is ~3,500 px wide.
MASK_CELLS_PER_TILE: Final = 16

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class TissueMask:
    """A boolean tissue mask of the whole slide; one pixel covers ``downsample`` level-0 pixels."""

    mask: BoolArray
    downsample: float
    saturation_threshold: float

    @property
    def tissue_share(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fractions(self, boxes: list[TileBox]) -> npt.NDArray[np.float64]:
        """Tissue share under each level-0 box (x, y, w, h), from an integral image."""
        rows, cols = self.mask.shape
        integral = np.zeros((rows + 1, cols + 1), dtype=np.int64)
        integral[1:, 1:] = self.mask.cumsum(axis=0).cumsum(axis=1)
        if not boxes:
            return np.zeros(0)
        array = np.asarray(boxes, dtype=np.float64)
        x0 = np.clip(np.floor(array[:, 0] / self.downsample), 0, cols).astype(np.int64)
        y0 = np.clip(np.floor(array[:, 1] / self.downsample), 0, rows).astype(np.int64)
        x1 = np.clip(np.ceil((array[:, 0] + array[:, 2]) / self.downsample), 0, cols)
        y1 = np.clip(np.ceil((array[:, 1] + array[:, 3]) / self.downsample), 0, rows)
        x1 = np.maximum(x1.astype(np.int64), np.minimum(x0 + 1, cols))
        y1 = np.maximum(y1.astype(np.int64), np.minimum(y0 + 1, rows))
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        fractions: npt.NDArray[np.float64] = inside / area
        return fractions


def best_level(slide: OpenSlide, downsample: float) -> int:
    """The level with the largest downsample not above ``downsample`` (level 0 if none is)."""
    return best_level_of(slide.level_downsamples, downsample)


def best_level_of(level_downsamples: Sequence[float], downsample: float) -> int:
    """`best_level` from a pyramid's downsamples (a slide registry record's, say)."""
    chosen = 0
    for level, level_downsample in enumerate(level_downsamples):
        if level_downsample <= downsample * (1.0 + DOWNSAMPLE_TOLERANCE):
            chosen = level
    return chosen


def read_overview(slide: OpenSlide, downsample: float) -> npt.NDArray[np.uint8]:
    """(rows, cols, 3) RGB of the whole slide at ``downsample``, read region by region."""
    width, height = slide.dimensions
    cols, rows = max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample))
    level = best_level(slide, downsample)
    scale = downsample / slide.level_downsamples[level]
    step = max(1, min(OVERVIEW_REGION, int(MAX_READ_SIDE / scale)))
    overview = np.empty((rows, cols, 3), dtype=np.uint8)
    for top in range(0, rows, step):
        for left in range(0, cols, step):
            out_w, out_h = min(step, cols - left), min(step, rows - top)
            size = (max(1, round(out_w * scale)), max(1, round(out_h * scale)))
            origin = (round(left * downsample), round(top * downsample))
            region = to_rgb(slide.read_region(origin, level, size))
            if region.size != (out_w, out_h):
                region = region.resize((out_w, out_h), Image.Resampling.BOX)
            overview[top : top + out_h, left : left + out_w] = np.asarray(region)
    return overview


def otsu_threshold(values: npt.NDArray[np.floating], bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance."""
    histogram, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    weights = histogram.astype(np.float64)
    if weights.sum() == 0:
        return 0.0
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(weights)
    above = below[-1] - below
    mean_below = np.cumsum(weights * centres) / np.maximum(below, 1e-12)
    total_mean = (weights * centres).sum()
    mean_above = (total_mean - np.cumsum(weights * centres)) / np.maximum(above, 1e-12)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def classify_tissue(rgb: npt.NDArray[np.uint8]) -> tuple[BoolArray, float]:
    """Tissue pixels of an RGB overview by the rules of the module doc, and the cut used."""
    hsv = np.asarray(Image.fromarray(rgb, mode="RGB").convert("HSV"), dtype=np.float32) / 255.0
    hue_degrees, saturation, value = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    dark = value < DARK_VALUE
    pen = (
        (hue_degrees >= PEN_HUE_DEGREES[0])
        & (hue_degrees <= PEN_HUE_DEGREES[1])
        & (saturation >= PEN_MIN_SATURATION)
    )
    candidates = saturation[~dark & ~pen]
    threshold = otsu_threshold(candidates) if candidates.size else MAX_SATURATION
    threshold = min(MAX_SATURATION, max(MIN_SATURATION, threshold))
    tissue = (saturation > threshold) & ~dark & ~pen
    return _cleaned(tissue), threshold


def _cleaned(mask: BoolArray) -> BoolArray:
    """Opening (drop specks) then closing (fill pinholes), each 3x3, by PIL's rank filters."""
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    opened = image.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    closed = opened.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))
    cleaned: BoolArray = np.asarray(closed) > 127
    return cleaned


def image_tissue_mask(image: Image.Image, tile_size: int) -> TissueMask:
    """The tissue mask of an in-memory image cut into ``tile_size`` tiles (a region query).

    The image is reduced by averaging to `MASK_CELLS_PER_TILE` mask pixels per tile edge, as a
    slide's overview is, and classified by the same rules; boxes are then in image pixels.
    """
    downsample = max(1.0, tile_size / MASK_CELLS_PER_TILE)
    width, height = image.size
    cols, rows = max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample))
    rgb = to_rgb(image)
    overview = rgb if rgb.size == (cols, rows) else rgb.resize((cols, rows), Image.Resampling.BOX)
    mask, threshold = classify_tissue(np.asarray(overview))
    return TissueMask(mask, downsample, threshold)


def tissue_mask(slide: OpenSlide, downsample: float) -> TissueMask:
    """The slide's tissue mask at ``downsample`` level-0 pixels per mask pixel."""
    mask, threshold = classify_tissue(read_overview(slide, downsample))
    return TissueMask(mask, downsample, threshold)
