"""The feature model: views shaped as the image model's, checkpoints that carry their card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.card import ModelCard
from model.checkpoint import CheckpointMismatchError, save_checkpoint
from model.feature_spq import FeatureSPQModel, load_feature_checkpoint, save_feature_checkpoint
from model.spq import SPQModel

INPUT_DIM = 12


def feature_card(**changes: object) -> ModelCard:
    fields: dict[str, object] = {
        "backbone": "features:hipt",
        "num_codebooks": 4,
        "codebook_size": 16,
        "codeword_dim": 3,
        "input_dim": INPUT_DIM,
        "feature_model": "hipt",
    }
    fields.update(changes)
    return ModelCard.model_validate(fields)


def test_encode_gives_unit_sub_vectors_and_codes_select_the_nearest_codewords() -> None:
    model = FeatureSPQModel(feature_card()).eval()
    features = torch.randn(20, INPUT_DIM)
    descriptors = model.encode(features)
    assert descriptors.shape == (20, 12)
    norms = descriptors.reshape(20, 4, 3).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    codes = model.assign_codes(features)
    assert codes.shape == (20, 4) and int(codes.max()) < 16
    cosines = torch.einsum("nmd,mkd->nmk", descriptors.reshape(20, 4, 3), model.codebooks())
    chosen = model.decode(codes).reshape(20, 4, 3)
    best = (descriptors.reshape(20, 4, 3) * chosen).sum(-1)
    assert torch.allclose(best, cosines.max(dim=-1).values, atol=1e-6)


def test_centring_subtracts_the_stored_mean_before_the_head() -> None:
    model = FeatureSPQModel(feature_card()).eval()
    features = torch.randn(5, INPUT_DIM)
    uncentred = model.encode(features)
    shift = torch.randn(INPUT_DIM)
    model.feature_mean.copy_(shift)
    assert torch.allclose(model.encode(features + shift), uncentred, atol=1e-5)
    assert not torch.allclose(model.encode(features), uncentred, atol=1e-3)


def test_features_of_the_wrong_length_are_refused_with_the_expected_shape() -> None:
    model = FeatureSPQModel(feature_card())
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        model.encode(torch.randn(3, 7))


def test_a_checkpoint_round_trip_keeps_weights_mean_and_card(tmp_path: Path) -> None:
    model = FeatureSPQModel(feature_card(feature_head_hidden=8)).eval()
    model.feature_mean.copy_(torch.randn(INPUT_DIM))
    path = tmp_path / "features.pt"
    save_feature_checkpoint(model, path)
    loaded = load_feature_checkpoint(path)
    features = torch.randn(6, INPUT_DIM)
    assert torch.equal(loaded.assign_codes(features), model.assign_codes(features))
    assert loaded.card == model.card


def test_an_image_model_checkpoint_is_not_read_as_a_feature_model(tmp_path: Path) -> None:
    image_model = SPQModel(ModelCard(num_codebooks=2, codeword_dim=4, hidden_dim=8))
    path = tmp_path / "images.pt"
    save_checkpoint(image_model, path)
    with pytest.raises(CheckpointMismatchError, match="image model"):
        load_feature_checkpoint(path)


def test_the_card_key_names_the_input_and_its_producer_only_for_feature_models() -> None:
    key = feature_card().compatibility_key()
    assert key["input_dim"] == INPUT_DIM and key["feature_model"] == "hipt"
    assert feature_card(feature_model="uni").compatibility_key() != key
    assert "input_dim" not in ModelCard().compatibility_key()
