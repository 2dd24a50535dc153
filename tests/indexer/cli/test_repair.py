"""`histosearch repair` end to end on an index built with a small real SPQ model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.cli import main
from indexer.index.store import ArchiveIndex
from model import ModelCard, build_model, save_checkpoint
from tests.indexer.index_helpers import items


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelCard(input_size=32))
    save_checkpoint(model, tmp_path / "model.pt")
    index = ArchiveIndex.create(tmp_path / "index", tmp_path / "model.pt")
    descriptors = np.random.default_rng(0).standard_normal((40, index.descriptor_dim))
    index.add(descriptors.astype(np.float32), items(40))
    index.close()
    return tmp_path / "index"


def committed_codes(directory: Path) -> Path:
    generation = json.loads((directory / "manifest.json").read_text())["snapshot"]["generation"]
    return directory / f"codes.{generation}.faiss"


def test_help_explains_what_repair_checks_and_rebuilds(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["repair", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("PRAGMA integrity_check", "model_card.json", "model.pt", "--index", "rebuilds"):
        assert phrase in text


def test_repair_rebuilds_a_truncated_snapshot_after_checking_the_model(index_dir, capsys):
    codes = committed_codes(index_dir)
    codes.write_bytes(codes.read_bytes()[:50])
    assert main(["repair", "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert "checked: metadata.sqlite: PRAGMA integrity_check ok" in out
    assert "checked: model.pt: loads, and its codebooks are the codes' codebooks" in out
    assert f"{codes.name} has 50 bytes" in out
    assert "done:    rebuilt codes." in out and "(40 items)" in out
    assert out.rstrip().endswith("repaired")
    with ArchiveIndex.open(index_dir) as index:
        assert len(index) == 40 and index.unsaved_changes == 0


def test_repair_refuses_another_checkpoint_and_rebuilds_nothing(index_dir, tmp_path, capsys):
    torch.manual_seed(1)
    save_checkpoint(build_model(ModelCard(input_size=32)), index_dir / "model.pt")
    before = committed_codes(index_dir)
    assert main(["repair", "--index", str(index_dir)]) == 2
    out = capsys.readouterr().out
    assert "PROBLEM: model.pt is not the checkpoint recorded in manifest.json" in out
    assert "not repaired" in out and "done:" not in out
    assert committed_codes(index_dir) == before and before.is_file()


def test_other_verbs_name_the_repair_command_when_they_refuse(index_dir, caplog):
    (index_dir / "metadata.sqlite").write_bytes(b"garbage" * 1000)
    assert main(["stats", "--index", str(index_dir)]) == 2
    assert f"histosearch repair --index {index_dir}" in caplog.text
