"""The stain-colour descriptor against hand computations, and its branch in the SPQ head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ModelCard, build_model, load_checkpoint, save_checkpoint
from model.card import LEGACY_STAIN_VARIANCE_FLOOR, STAIN_VARIANCE_FLOOR
from model.preprocess import normalize
from model.stain_colour import (
    OD_HISTOGRAM_MAX,
    StainColourBranch,
    StainColourDescriptor,
    optical_density_histogram,
    optical_density_statistics,
)

CARD = ModelCard(input_size=32, num_codebooks=4, codeword_dim=8, stain_descriptor=True)


def two_pixel_image() -> torch.Tensor:
    """A 1 x 2 image: one white pixel and one pixel of intensities (e^-1, e^-0.5, 1/255 / 2)."""
    image = torch.ones(1, 3, 1, 2)
    image[0, :, 0, 1] = torch.tensor([math.exp(-1.0), math.exp(-0.5), 0.5 / 255])
    return image


def test_od_statistics_are_the_mean_and_spread_of_minus_log_intensity() -> None:
    statistics = optical_density_statistics(two_pixel_image())[0]
    # OD of the second pixel: 1, 0.5 and ln 255 (the darkest intensity is floored at 1/255).
    second = np.array([1.0, 0.5, math.log(255.0)])
    expected_mean = second / 2  # the white pixel has OD 0
    expected_std = second / 2  # two values 0 and x: population std x / 2
    assert statistics.numpy() == pytest.approx(np.concatenate([expected_mean, expected_std]))


def test_od_histogram_counts_each_pixel_in_its_joint_bin_as_a_loop_would() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 5, 7)
    bins = 4
    histograms = optical_density_histogram(images, bins)
    for image, histogram in zip(images, histograms, strict=True):
        counts = np.zeros(bins**3)
        for y in range(5):
            for x in range(7):
                density = -np.log(np.clip(image[:, y, x].numpy(), 1 / 255, 1.0))
                r, g, b = (min(int(d * bins / OD_HISTOGRAM_MAX), bins - 1) for d in density)
                counts[(r * bins + g) * bins + b] += 1
        assert histogram.numpy() == pytest.approx(np.sqrt(counts / counts.sum()), abs=1e-6)
        assert float(histogram.pow(2).sum()) == pytest.approx(1.0)


def test_the_descriptor_undoes_the_cards_normalisation_before_measuring() -> None:
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 8, 8)
    describe = StainColourDescriptor(CARD.mean, CARD.std, bins=3)
    described = describe(normalize(pixels, CARD))
    assert described.shape == (3, 6 + 27)
    assert described[:, :6] == pytest.approx(optical_density_statistics(pixels), abs=1e-5)
    assert described[:, 6:] == pytest.approx(optical_density_histogram(pixels, 3), abs=1e-5)


def largest_standardised_value(variance_floor: float) -> float:
    """Standardise 64 plain grey tiles, one with a single dark pixel in a bin no other tile
    uses, as training's first batch would; the largest histogram coordinate that comes out."""
    images = torch.full((64, 3, 8, 8), 0.8)
    images[0, :, 0, 0] = 0.1
    branch = StainColourBranch(CARD.mean, CARD.std, 6, 8, variance_floor).train()
    with torch.no_grad():
        standardised = branch.standardise(branch.describe(normalize(images, CARD)))
    return float(standardised[:, 6:].abs().max())


def test_the_variance_floor_keeps_a_bin_one_stray_pixel_reaches_from_dominating() -> None:
    # The stray pixel's bin holds sqrt(1/64) in one tile: with BatchNorm's own eps it is
    # standardised to sqrt(63) ~ 7.9 (every near-empty bin does that); the floor tames it.
    assert largest_standardised_value(LEGACY_STAIN_VARIANCE_FLOOR) > 7.5
    assert largest_standardised_value(STAIN_VARIANCE_FLOOR) < 2.5


def test_a_stain_card_written_before_the_floor_keeps_the_floor_it_was_trained_with() -> None:
    old = CARD.model_dump(mode="json")
    old.pop("stain_variance_floor")
    card = ModelCard.model_validate(old)
    assert card.stain_variance_floor == LEGACY_STAIN_VARIANCE_FLOOR
    branch = build_model(card).stain_branch
    assert branch is not None and branch.standardise.eps == LEGACY_STAIN_VARIANCE_FLOOR
    # Its key is the one an index built with it recorded, which named no floor.
    assert "stain_variance_floor" not in card.compatibility_key()
    assert CARD.compatibility_key()["stain_variance_floor"] == STAIN_VARIANCE_FLOOR
    new_branch = build_model(CARD).stain_branch
    assert new_branch is not None and new_branch.standardise.eps == STAIN_VARIANCE_FLOOR


def test_a_model_with_the_stain_branch_saves_loads_and_encodes_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(CARD).eval()
    images = normalize(torch.rand(4, 3, 32, 32), CARD)
    with torch.no_grad():
        before = model.encode(images)
    save_checkpoint(model, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.card.stain_descriptor and loaded.stain_branch is not None
    with torch.no_grad():
        assert torch.allclose(loaded.encode(images), before, atol=1e-6)
    sub_vectors = before.view(4, CARD.num_codebooks, CARD.codeword_dim)
    assert torch.allclose(sub_vectors.norm(dim=-1), torch.ones(4, CARD.num_codebooks), atol=1e-5)


def test_the_stain_branch_changes_the_descriptor_when_only_the_colour_changes() -> None:
    torch.manual_seed(0)
    model = build_model(CARD).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        whole = model.encode(normalize(pixels, CARD))
        stain = model.stain_branch(normalize(pixels, CARD))  # type: ignore[misc]
        darker = model.stain_branch(normalize(pixels * 0.5, CARD))  # type: ignore[misc]
    assert whole.shape == (2, CARD.descriptor_dim)
    assert not torch.allclose(stain, darker)


def test_a_card_written_before_the_stain_branch_loads_without_it_and_keeps_its_key() -> None:
    old = ModelCard(input_size=32, num_codebooks=4, codeword_dim=8).model_dump(mode="json")
    for name in ("stain_descriptor", "stain_histogram_bins"):
        old.pop(name)
    card = ModelCard.model_validate(old)
    assert not card.stain_descriptor
    key = card.compatibility_key()
    assert "stain_descriptor" not in key and "stain_histogram_bins" not in key
    assert build_model(card).stain_branch is None


def test_models_with_and_without_the_stain_branch_have_different_keys() -> None:
    plain = CARD.model_copy(update={"stain_descriptor": False})
    assert plain.compatibility_key() != CARD.compatibility_key()
    assert CARD.compatibility_key()["stain_histogram_bins"] == CARD.stain_histogram_bins


def test_backbone_outputs_alone_are_refused_by_a_model_with_the_stain_branch() -> None:
    model = build_model(CARD).eval()
    with torch.no_grad():
        features = model.trunk(normalize(torch.rand(2, 3, 32, 32), CARD))
        with pytest.raises(ValueError, match="pixels"):
            model.encode_backbone_output(features)


def test_a_checkpoint_whose_card_predates_the_stain_branch_still_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = CARD.model_copy(update={"stain_descriptor": False})
    model = build_model(plain).eval()
    save_checkpoint(model, tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    for name in ("stain_descriptor", "stain_histogram_bins"):
        del payload["card"][name]
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt", expected_card=plain)
    images = normalize(torch.rand(2, 3, 32, 32), plain)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(images), model.encode(images), atol=1e-6)
