"""Opening an index with its model: the three checks, and open-or-create for a checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.index.opening import IndexKindError, open_index, open_or_create_index
from indexer.index.store import ArchiveIndex, IndexDirectoryError
from model import CheckpointMismatchError, ModelCard, SPQModel, build_model, save_checkpoint
from model.feature_spq import FeatureSPQModel, save_feature_checkpoint
from tests.indexer.index_helpers import items

CPU = torch.device("cpu")


def saved_model(path: Path, seed: int, **card: object) -> SPQModel:
    torch.manual_seed(seed)
    model = build_model(ModelCard.model_validate({"input_size": 32, **card}))
    save_checkpoint(model, path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    saved_model(root / "a.pt", seed=0)
    saved_model(root / "b.pt", seed=1)
    return root / "a.pt", root / "b.pt"


def codebooks_of(model: SPQModel | FeatureSPQModel) -> np.ndarray:
    return model.codebooks().detach().numpy()


def test_the_same_checkpoint_creates_then_reopens_the_index(tmp_path, checkpoints):
    first, _ = checkpoints
    with open_or_create_index(tmp_path / "index", first, CPU) as opened:
        created = codebooks_of(opened.model)
        assert len(opened.index) == 0
    with open_or_create_index(tmp_path / "index", first, CPU) as opened:
        np.testing.assert_array_equal(codebooks_of(opened.model), created)
    with open_index(tmp_path / "index", CPU) as opened:
        assert opened.index.checkpoint_path is not None
        assert opened.embedder().embed([]).shape == (0, opened.model.card.descriptor_dim)


def test_another_checkpoint_is_refused_with_what_to_do(tmp_path, checkpoints):
    first, second = checkpoints
    open_or_create_index(tmp_path / "index", first, CPU).close()
    with pytest.raises(IndexDirectoryError, match="another model") as refused:
        open_or_create_index(tmp_path / "index", second, CPU)
    assert "new directory" in str(refused.value) and "delete" in str(refused.value)


def test_a_new_index_needs_a_checkpoint(tmp_path):
    with pytest.raises(IndexDirectoryError, match="not an index yet"):
        open_or_create_index(tmp_path / "index", None, CPU)
    assert not (tmp_path / "index").exists()


def test_an_index_without_model_pt_is_refused(tmp_path, checkpoints):
    model = saved_model(tmp_path / "model.pt", seed=0)
    ArchiveIndex.create_from_codebooks(
        tmp_path / "index", codebooks_of(model), card=model.card.model_dump(mode="json")
    ).close()
    with pytest.raises(IndexDirectoryError, match=r"no model\.pt"):
        open_index(tmp_path / "index", CPU)


def test_a_model_whose_card_disagrees_with_the_index_is_refused_naming_the_field(tmp_path):
    model = saved_model(tmp_path / "model.pt", seed=0)
    index_card = model.card.model_copy(update={"input_size": 64})
    ArchiveIndex.create_from_codebooks(
        tmp_path / "index",
        codebooks_of(model),
        card=index_card.model_dump(mode="json"),
        checkpoint_path=tmp_path / "model.pt",
    ).close()
    with pytest.raises(CheckpointMismatchError, match="input_size: expected 64, checkpoint has 32"):
        open_index(tmp_path / "index", CPU)


def test_a_model_whose_codebooks_differ_from_the_codes_is_refused(tmp_path, checkpoints):
    model = saved_model(tmp_path / "model.pt", seed=0)
    other = saved_model(tmp_path / "other.pt", seed=1)
    ArchiveIndex.create_from_codebooks(
        tmp_path / "index",
        codebooks_of(other),
        card=model.card.model_dump(mode="json"),
        checkpoint_path=tmp_path / "model.pt",
    ).close()
    with pytest.raises(IndexDirectoryError, match="codebooks differ"):
        open_index(tmp_path / "index", CPU)


# ---- feature indexes: the model reads vectors a foundation model already produced -----------

FEATURE_DIM = 12


def saved_feature_model(path: Path, seed: int, **card: object) -> FeatureSPQModel:
    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "backbone": "features:hipt",
        "num_codebooks": 4,
        "codebook_size": 16,
        "codeword_dim": 3,
        "input_dim": FEATURE_DIM,
        "feature_model": "hipt",
        **card,
    }
    model = FeatureSPQModel(ModelCard.model_validate(fields)).eval()
    save_feature_checkpoint(model, path)
    return model


@pytest.mark.parametrize("shards", [None, 2])
def test_a_feature_checkpoint_creates_an_index_that_reopens_as_a_feature_index(tmp_path, shards):
    model = saved_feature_model(tmp_path / "features.pt", seed=0)
    with open_or_create_index(tmp_path / "index", tmp_path / "features.pt", CPU, shards) as opened:
        assert opened.is_feature_index and opened.feature_dim == FEATURE_DIM
        assert isinstance(opened.model, FeatureSPQModel)
        np.testing.assert_array_equal(codebooks_of(opened.model), codebooks_of(model))
        rows = np.random.default_rng(0).normal(size=(50, FEATURE_DIM)).astype(np.float32)
        descriptors = opened.feature_encoder(batch_size=7).descriptors(rows)
        opened.index.add(descriptors, items(50))
    with open_index(tmp_path / "index", CPU) as reopened:
        encoder = reopened.feature_encoder()
        assert reopened.is_feature_index and len(reopened.index) == 50
        expected = model.assign_codes(torch.from_numpy(rows)).numpy()
        np.testing.assert_array_equal(encoder.codes(rows), expected)
        (hits,) = reopened.index.search(encoder.descriptors(rows[:1]), 1)
        assert hits[0].record is not None and hits[0].record.source == "slide-0/tile-0.png"


def test_feature_rows_of_another_length_are_refused_naming_both_lengths(tmp_path):
    saved_feature_model(tmp_path / "features.pt", seed=0)
    opened = open_or_create_index(tmp_path / "index", tmp_path / "features.pt", CPU)
    with opened, pytest.raises(ValueError, match=r"\(N, 12\).*\(3, 13\)"):
        opened.feature_encoder().descriptors(np.zeros((3, 13), np.float32))


def test_each_kind_of_index_refuses_the_other_kinds_encoder(tmp_path, checkpoints):
    saved_feature_model(tmp_path / "features.pt", seed=0)
    opened = open_or_create_index(tmp_path / "features", tmp_path / "features.pt", CPU)
    with opened, pytest.raises(IndexKindError, match="12-d vectors of hipt, not images"):
        opened.embedder()
    with open_or_create_index(tmp_path / "images", checkpoints[0], CPU) as opened:
        assert not opened.is_feature_index and opened.feature_dim == 0
        with pytest.raises(IndexKindError, match="image index"):
            opened.feature_encoder()


def test_a_feature_model_of_another_foundation_model_is_refused_naming_it(tmp_path):
    model = saved_feature_model(tmp_path / "features.pt", seed=0)
    saved_feature_model(tmp_path / "uni.pt", seed=0, feature_model="uni")
    open_or_create_index(tmp_path / "index", tmp_path / "features.pt", CPU).close()
    with pytest.raises(
        IndexDirectoryError, match="vectors of 'hipt', that model reads vectors of 'uni'"
    ):
        open_or_create_index(tmp_path / "index", tmp_path / "uni.pt", CPU)
    ArchiveIndex.create_from_codebooks(
        tmp_path / "mixed",
        codebooks_of(model),
        card=model.card.model_dump(mode="json"),
        checkpoint_path=tmp_path / "uni.pt",
    ).close()
    with pytest.raises(CheckpointMismatchError, match="feature_model: expected 'hipt'"):
        open_index(tmp_path / "mixed", CPU)
