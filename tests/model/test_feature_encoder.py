"""The feature encoder: rows to the model's own descriptors and codes, in batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.card import ModelCard
from model.checkpoint import CheckpointMismatchError, load_index_model, save_checkpoint
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel, save_feature_checkpoint
from model.spq import SPQModel, build_model

CARD = {
    "backbone": "features:hipt",
    "num_codebooks": 4,
    "codebook_size": 16,
    "codeword_dim": 3,
    "input_dim": 10,
    "feature_model": "hipt",
}


def test_batches_give_the_models_own_descriptors_and_codes() -> None:
    torch.manual_seed(0)
    model = FeatureSPQModel(ModelCard.model_validate(CARD)).eval()
    rows = np.random.default_rng(1).normal(size=(23, 10))
    encoder = FeatureEncoder(model, torch.device("cpu"), batch_size=5)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(rows).float()).numpy()
        codes = model.assign_codes(torch.from_numpy(rows).float()).numpy()
    np.testing.assert_allclose(encoder.descriptors(rows), expected, atol=1e-6)
    np.testing.assert_array_equal(encoder.codes(rows), codes)
    assert encoder.descriptors(rows[:0]).shape == (0, 12)


def test_load_index_model_gives_each_kind_and_checks_the_expected_card(tmp_path) -> None:
    save_feature_checkpoint(FeatureSPQModel(ModelCard.model_validate(CARD)), tmp_path / "f.pt")
    save_checkpoint(build_model(ModelCard.model_validate({"input_size": 32})), tmp_path / "i.pt")
    assert isinstance(load_index_model(tmp_path / "f.pt"), FeatureSPQModel)
    assert isinstance(load_index_model(tmp_path / "i.pt"), SPQModel)
    other = ModelCard.model_validate({**CARD, "input_dim": 11})
    with pytest.raises(CheckpointMismatchError, match="input_dim: expected 11, checkpoint has 10"):
        load_index_model(tmp_path / "f.pt", expected_card=other)
