"""The colour-histogram baseline against histograms counted by hand."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.evaluate.baselines import colour_histograms


def image_of(pixels: list[tuple[int, int, int]]) -> Image.Image:
    return Image.fromarray(np.array([pixels], dtype=np.uint8), mode="RGB")


def test_histogram_counts_each_pixel_in_its_joint_rgb_bin_square_rooted():
    # 8 bins of 32 levels per channel; bin (r, g, b) sits at (r * 8 + g) * 8 + b.
    black, white, red = (0, 0, 0), (255, 255, 255), (255, 0, 0)
    edge = (32, 31, 64)  # r: bin 1 (32 starts it), g: bin 0 (31 ends it), b: bin 2
    [histogram] = colour_histograms([image_of([black, white, red, red, edge])]).numpy()
    expected = np.zeros(512, dtype=np.float32)
    expected[0] = math.sqrt(1 / 5)  # black
    expected[511] = math.sqrt(1 / 5)  # white: bin (7, 7, 7)
    expected[448] = math.sqrt(2 / 5)  # red: bin (7, 0, 0)
    expected[66] = math.sqrt(1 / 5)  # (1, 0, 2) -> 64 + 0 + 2
    np.testing.assert_allclose(histogram, expected, atol=1e-6)
    assert float(np.linalg.norm(histogram)) == pytest.approx(1.0, abs=1e-6)  # Hellinger


def test_other_modes_are_counted_as_the_rgb_they_show():
    grey_white = Image.new("L", (3, 3), 255)
    transparent = Image.new("RGBA", (3, 3), (0, 0, 0, 0))  # laid on white, the glass
    histograms = colour_histograms([grey_white, transparent])
    expected = torch.zeros(2, 512)
    expected[:, 511] = 1.0
    torch.testing.assert_close(histograms, expected)


def test_fewer_bins_merge_levels():
    [histogram] = colour_histograms([image_of([(0, 0, 0), (127, 127, 127)])], bins=2).numpy()
    assert histogram.shape == (8,)
    np.testing.assert_allclose(histogram, [1.0, 0, 0, 0, 0, 0, 0, 0], atol=1e-6)
