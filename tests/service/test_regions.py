"""The pure parts of region queries: the evenly spaced subset, the per-item aggregation and the
tissue rule (the slides' own Otsu mask) on a hand-made image."""

import numpy as np
from PIL import Image, ImageDraw

from indexer.index.tiling import tissue_fraction
from indexer.index.tissue import classify_tissue, image_tissue_mask
from service.regions import IndexTiling, aggregate_tile_hits, evenly_spaced, region_tiles


def test_evenly_spaced_keeps_everything_under_the_limit_and_spreads_the_rest():
    assert evenly_spaced(3, 64) == [0, 1, 2]
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(100, 64) == sorted(set(evenly_spaced(100, 64)))
    assert len(evenly_spaced(100, 64)) == 64
    assert evenly_spaced(5, 1) == [0]


def test_items_rank_by_best_score_then_query_tiles_that_found_them_then_id():
    scores = np.array([[5.0, 4.0, 3.0], [5.0, 4.0, -np.inf]], dtype=np.float32)
    ids = np.array([[7, 9, 3], [8, 3, -1]], dtype=np.int64)
    # 7 and 8 tie at 5.0 (one tile each: id order); 3 (two tiles, best 4.0) beats 9 (one tile).
    assert aggregate_tile_hits(scores, ids, 10) == [(7, 5.0), (8, 5.0), (3, 4.0), (9, 4.0)]
    assert aggregate_tile_hits(scores, ids, 2) == [(7, 5.0), (8, 5.0)]


# ---- the tissue rule of region queries: the slides' Otsu mask -----------------------------------

CELL = 64
PINK = (214, 120, 170)  # eosin
PALE_PINK = (236, 205, 222)  # pale stroma: saturation 0.13, value 0.93
GLASS = (242, 242, 244)
GREEN_PEN = (40, 150, 60)
BLACK = (20, 20, 25)


def hand_made_region() -> tuple[Image.Image, list[tuple[int, int]]]:
    """A 5 x 2 grid of 64 px cells, and the cells a slide's tissue rule keeps (column, row).

    Row 0: tissue, glass, green pen, black mark, pale tissue.
    Row 1: tissue on its left half, tissue on a fifth, tissue with glass specks, glass, tissue.
    """
    image = Image.new("RGB", (5 * CELL, 2 * CELL), GLASS)
    draw = ImageDraw.Draw(image)

    def fill(col: int, row: int, colour: tuple[int, int, int], width: int = CELL) -> None:
        x, y = col * CELL, row * CELL
        draw.rectangle((x, y, x + width - 1, y + CELL - 1), fill=colour)

    fill(0, 0, PINK)
    fill(2, 0, GREEN_PEN)
    fill(3, 0, BLACK)
    fill(4, 0, PALE_PINK)
    fill(0, 1, PINK, width=CELL // 2)
    fill(1, 1, PINK, width=CELL // 5)
    fill(2, 1, PINK)
    for speck in range(0, CELL, 8):  # one-pixel holes: filled by the mask's closing
        image.putpixel((2 * CELL + speck, CELL + speck), GLASS)
    fill(4, 1, PINK)
    return image, [(0, 0), (4, 0), (0, 1), (2, 1), (4, 1)]


def test_region_tiles_keep_exactly_the_cells_the_slides_tissue_rule_keeps():
    image, expected = hand_made_region()
    region = region_tiles(image, IndexTiling(tile_size=CELL, mpp=0.5), max_tiles=64)
    crops = [image.crop((c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL)) for c, r in expected]
    assert region.tissue_tiles == len(expected)
    assert [tile.tobytes() for tile in region.tiles] == [crop.tobytes() for crop in crops]


def test_green_pen_is_refused_by_the_region_rule_where_the_plain_tissue_check_keeps_it():
    # The fixed check of `indexer.index.tiling` sees saturated ink as tissue; H&E has no green.
    pen = Image.new("RGB", (CELL, CELL), GREEN_PEN)
    assert tissue_fraction(pen) == 1.0
    image, _ = hand_made_region()
    mask = image_tissue_mask(image, CELL)
    assert mask.fractions([(2 * CELL, 0, CELL, CELL)])[0] == 0.0
    assert mask.fractions([(0, 0, CELL, CELL)])[0] == 1.0


def test_a_region_query_mask_is_a_slide_overview_mask_of_the_same_pixels():
    # The same classification as `tissue_mask` on a slide: classify_tissue of the box-reduced
    # image, 16 mask pixels along a tile's edge.
    image, _ = hand_made_region()
    mask = image_tissue_mask(image, CELL)
    reduced = np.asarray(image.resize((5 * 16, 2 * 16), Image.Resampling.BOX))
    assert mask.downsample == CELL / 16
    assert np.array_equal(mask.mask, classify_tissue(reduced)[0])
