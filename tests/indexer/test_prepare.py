"""`prepare`: a model already in the work folder and an index already built are reused; an index
built with another model is refused."""

import shutil
from pathlib import Path

import pytest
import torch

from indexer.index.store import IndexDirectoryError
from indexer.prepare import PrepareConfig, prepare
from model import ModelCard, build_model, save_checkpoint
from tests.indexer.index_helpers import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


def small_archive(root: Path, count: int = 6) -> Path:
    paths = sorted(KATHER.rglob("*.tif"))[::40][:count]
    if len(paths) < count:
        pytest.skip("Kather 2016 tiles are missing")
    for path in paths:
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def save_model(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    save_checkpoint(build_model(ModelCard(input_size=32)), path)


def test_prepare_reuses_the_model_and_then_the_index(tmp_path):
    config = PrepareConfig(
        archive=small_archive(tmp_path / "archive"),
        workdir=tmp_path / "work",
        index_dir=tmp_path / "index",
        device="cpu",
    )
    save_model(config.checkpoint, seed=0)
    model_bytes = config.checkpoint.read_bytes()
    first = prepare(config)
    assert first.tiles_added == 6 and first.images_finished_before == 0
    assert config.checkpoint.read_bytes() == model_bytes  # reused, not trained again
    assert (config.index_dir / "model.pt").read_bytes() == model_bytes
    again = prepare(config)
    assert again.tiles_added == 0 and again.images_finished_before == 6
    assert not (config.workdir / "model" / "last.pt").exists()  # no training run


def test_prepare_refuses_an_index_built_with_another_model(tmp_path):
    config = PrepareConfig(
        archive=small_archive(tmp_path / "archive", count=2),
        workdir=tmp_path / "work",
        index_dir=tmp_path / "index",
        device="cpu",
    )
    save_model(config.checkpoint, seed=0)
    prepare(config)
    save_model(config.checkpoint, seed=1)
    with pytest.raises(IndexDirectoryError, match="another model"):
        prepare(config)
