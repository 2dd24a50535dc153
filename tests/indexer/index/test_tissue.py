"""The tissue mask's rules: stained tissue kept; glass, pen, dark marks and specks dropped."""

import numpy as np
import openslide
import pytest

from indexer.index.tissue import TissueMask, best_level, classify_tissue, otsu_threshold
from support.slide_samples import GLASS, checkerboard_mosaic, write_mosaic_slide

PINK = (214, 120, 170)  # eosin-like
GREEN_PEN = (40, 150, 60)
BLACK_PEN = (20, 20, 25)


def overview() -> np.ndarray:
    rgb = np.empty((60, 80, 3), dtype=np.uint8)
    rgb[...] = GLASS
    rgb[10:30, 10:30] = PINK
    rgb[19, 19] = GLASS  # a pinhole inside tissue
    rgb[40:50, 10:40] = GREEN_PEN
    rgb[10:30, 50:60] = BLACK_PEN
    rgb[55, 70] = PINK  # a lone speck of dust
    return rgb


def test_stained_tissue_is_kept_and_its_pinholes_filled():
    mask, _ = classify_tissue(overview())
    assert mask[11:29, 11:29].all()
    assert mask[19, 19]


def test_glass_green_pen_black_marks_and_specks_are_not_tissue():
    mask, _ = classify_tissue(overview())
    assert not mask[40:50, 10:40].any()
    assert not mask[10:30, 50:60].any()
    assert not mask[55, 70]
    assert not mask[:8].any()
    assert mask.sum() == pytest.approx(20 * 20, abs=8)


def test_otsu_threshold_matches_a_brute_force_search_of_the_between_class_variance():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.03, 0.01, 4000), rng.normal(0.4, 0.08, 1500)])
    values = np.clip(values, 0, 1)
    bins = np.linspace(0, 1, 257)
    best, best_cut = -1.0, 0.0
    for cut in bins[1:-1]:
        low, high = values[values < cut], values[values >= cut]
        if len(low) and len(high):
            variance = len(low) * len(high) * (low.mean() - high.mean()) ** 2
            if variance > best:
                best, best_cut = variance, cut
    assert otsu_threshold(values) == pytest.approx(best_cut, abs=2 / 256)


def test_tissue_share_under_boxes_counts_mask_pixels_at_level_zero_scale():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:5, :5] = True
    tissue = TissueMask(mask, downsample=8.0, saturation_threshold=0.1)
    shares = tissue.fractions([(0, 0, 40, 40), (0, 0, 80, 80), (40, 40, 40, 40), (20, 0, 40, 40)])
    assert shares.tolist() == pytest.approx([1.0, 0.25, 0.0, 0.5])


def test_best_level_is_the_largest_downsample_not_above_the_one_needed(tmp_path):
    mosaic = checkerboard_mosaic(2048, 1024, 256, [(0, 0)])
    slide = openslide.OpenSlide(str(write_mosaic_slide(tmp_path / "s.tif", mosaic, 0.25)))
    assert slide.level_downsamples[:4] == (1.0, 2.0, 4.0, 8.0)
    assert [best_level(slide, d) for d in (0.5, 1.0, 1.9, 2.0, 3.99, 4.0, 100.0)] == [
        0,
        0,
        0,
        1,
        1,
        2,
        slide.level_count - 1,
    ]
