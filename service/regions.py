"""Region queries: an upload larger than one of the index's tiles is tiled like the archive.

The index's tile geometry (edge in pixels and its resolution in um/px) comes from the slide
registry, where `histosearch index --source slides` records it for every slide. The upload is
scaled from its own mpp (a form field; default the index's) to the index's, cut into tiles with
the archive's own boxes (`indexer.index.tiling.tile_boxes`, stride = tile edge), and only tiles
whose tissue share reaches the slides' default ``--min-tissue`` are kept, by the slides' own tissue
rule: the Otsu mask of `indexer.index.tissue` (`image_tissue_mask`, 16 mask pixels a tile edge).
At most ``max_tiles`` evenly spaced tissue tiles are searched, so that a query's cost is bounded.

Aggregation (`aggregate_tile_hits`): every query tile is searched for the same top N; an item's
score is its best score over the query tiles, ties broken by how many query tiles found it
(more first), then by item id. Slides are then ranked over these pooled hits by the usual rule of
`indexer.index.slides.rank_slides`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.index.slides import SlideRegistry
from indexer.index.tiling import TilingConfig, tile_boxes
from indexer.index.tissue import image_tissue_mask
from model.preprocess import resized_pixels

# Tissue share of the mask a query tile needs: `histosearch index --source slides`' default.
QUERY_MIN_TISSUE = TilingConfig().min_tissue


@dataclass(frozen=True, slots=True)
class IndexTiling:
    """The tile edge (pixels) and resolution (um/px) of the index's slide tiles."""

    tile_size: int
    mpp: float


@dataclass(frozen=True, slots=True)
class RegionTiles:
    """The query tiles cut from one region upload."""

    tiles: list[Image.Image]
    tissue_tiles: int
    """Tissue tiles in the region; more than ``len(tiles)`` when the cap took a subset."""


def index_tiling(registry: SlideRegistry) -> IndexTiling | None:
    """The geometry most of the index's slides were tiled with; None for an index of no slides."""
    geometries = Counter(
        (record.tile_size, record.tile_mpp)
        for record in registry.all()
        if record.tile_size is not None and record.tile_mpp is not None
    )
    if not geometries:
        return None
    (tile_size, mpp), _ = geometries.most_common(1)[0]
    assert tile_size is not None and mpp is not None
    return IndexTiling(tile_size, mpp)


def at_index_mpp(image: Image.Image, upload_mpp: float, tiling: IndexTiling) -> Image.Image:
    """``image`` resized from ``upload_mpp`` to the index's mpp (unchanged when they agree)."""
    if upload_mpp == tiling.mpp:
        return image
    factor = upload_mpp / tiling.mpp
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return Image.fromarray(resized_pixels(image, size))


def is_region(image: Image.Image, tiling: IndexTiling) -> bool:
    """Larger than one tile along either side (after scaling to the index's mpp)."""
    return max(image.size) > tiling.tile_size


def tissue_share(image: Image.Image, tiling: IndexTiling) -> float:
    """The share of ``image`` (already at the index's mpp) under the archive's tissue mask."""
    width, height = image.size
    mask = image_tissue_mask(image, tiling.tile_size)
    return float(mask.fractions([(0, 0, width, height)])[0])


def region_tiles(image: Image.Image, tiling: IndexTiling, max_tiles: int) -> RegionTiles:
    """The tissue tiles of ``image`` (already at the index's mpp), at most ``max_tiles``."""
    config = TilingConfig(tile_size=tiling.tile_size, min_tissue=QUERY_MIN_TISSUE)
    boxes = tile_boxes(*image.size, config)
    shares = image_tissue_mask(image, tiling.tile_size).fractions(boxes).tolist()
    tissue = [box for box, share in zip(boxes, shares, strict=True) if share >= QUERY_MIN_TISSUE]
    kept = [tissue[i] for i in evenly_spaced(len(tissue), max_tiles)]
    return RegionTiles([image.crop((x, y, x + w, y + h)) for x, y, w, h in kept], len(tissue))


def evenly_spaced(count: int, limit: int) -> list[int]:
    """``min(count, limit)`` indices spread evenly over ``range(count)``, first and last kept."""
    if count <= limit:
        return list(range(count))
    if limit == 1:
        return [0]
    # The step (count - 1) / (limit - 1) exceeds 1, so the rounded indices are distinct.
    return [round(i * (count - 1) / (limit - 1)) for i in range(limit)]


def aggregate_tile_hits(
    scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], limit: int
) -> list[tuple[int, float]]:
    """(item id, score) of the ``limit`` best items over all query tiles, by the module's rule.

    ``scores`` and ``ids`` are `Index.search_arrays`' (Q, N) arrays (id -1 pads a row).
    """
    best: dict[int, float] = {}
    found_by: Counter[int] = Counter()
    for score, item_id in zip(scores.ravel().tolist(), ids.ravel().tolist(), strict=True):
        if item_id < 0:
            continue
        found_by[item_id] += 1
        if item_id not in best or score > best[item_id]:
            best[item_id] = score
    ranked = sorted(best, key=lambda item_id: (-best[item_id], -found_by[item_id], item_id))
    return [(item_id, best[item_id]) for item_id in ranked[:limit]]
