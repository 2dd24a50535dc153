"""Opening an index with its model: the three checks, and open-or-create for a checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.index.opening import open_index, open_or_create_index
from indexer.index.store import ArchiveIndex, IndexDirectoryError
from model import CheckpointMismatchError, ModelCard, SPQModel, build_model, save_checkpoint

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


def codebooks_of(model: SPQModel) -> np.ndarray:
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
