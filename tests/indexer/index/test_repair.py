"""`repair_index`: rebuilds the snapshot from SQLite, refuses what SQLite cannot vouch for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.index.manifest import IndexManifest
from indexer.index.repair import repair_index
from indexer.index.store import ArchiveIndex
from tests.indexer.index_helpers import descriptors_near_codewords, items, new_index, unit_codebooks


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    index = new_index(tmp_path / "index")
    index.add(descriptors_near_codewords(50, index.codebooks), items(50))
    index.remove([7])
    index.close()
    return tmp_path / "index"


def generation_of(directory: Path) -> int:
    generation: int = json.loads((directory / "manifest.json").read_text())["snapshot"][
        "generation"
    ]
    return generation


def test_repair_rebuilds_a_truncated_snapshot_and_reports_it(saved: Path) -> None:
    before = generation_of(saved)
    codes = saved / f"codes.{before}.faiss"
    codes.write_bytes(codes.read_bytes()[:100])
    report = repair_index(saved)
    assert report.repaired, report.problems
    assert "metadata.sqlite: PRAGMA integrity_check ok" in report.checked
    assert any(f"codes.{before}.faiss has 100 bytes" in line for line in report.checked)
    assert report.done == [
        f"rebuilt codes.{before + 1}.faiss and columns.{before + 1}.npz from metadata.sqlite "
        "(49 items) and committed them in manifest.json; older snapshot files removed"
    ]
    assert not codes.exists()
    with ArchiveIndex.open(saved) as index:
        assert len(index) == 49 and index.unsaved_changes == 0
        assert index.opened_from.startswith(f"snapshot generation {before + 1} (49 items)")


def test_repair_of_a_sound_index_rewrites_the_same_items(saved: Path) -> None:
    report = repair_index(saved)
    assert report.repaired
    assert any(line.startswith("snapshot on disk: snapshot generation") for line in report.checked)
    with ArchiveIndex.open(saved) as index:
        assert len(index) == 49


def test_a_corrupt_database_is_reported_and_nothing_is_rebuilt(saved: Path) -> None:
    generation = generation_of(saved)
    data = bytearray((saved / "metadata.sqlite").read_bytes())
    # Overwrite the middle pages (table b-trees) but keep the header: SQLite opens the file and
    # integrity_check finds the damage.
    data[8192:20480] = b"\x07" * (20480 - 8192)
    (saved / "metadata.sqlite").write_bytes(bytes(data))
    report = repair_index(saved)
    assert not report.repaired and not report.done
    assert "metadata.sqlite fails PRAGMA integrity_check" in report.problems[0]
    assert "restore it from a backup" in report.problems[0]
    assert generation_of(saved) == generation


def test_a_missing_database_cannot_be_repaired(saved: Path) -> None:
    (saved / "metadata.sqlite").unlink()
    report = repair_index(saved)
    assert not report.repaired
    assert "has no metadata.sqlite: the items cannot be recovered" in report.problems[0]


def test_an_edited_model_card_is_reported_not_rebuilt(saved: Path) -> None:
    card = json.loads((saved / "model_card.json").read_text())
    (saved / "model_card.json").write_text(json.dumps({**card, "backbone": "other"}))
    report = repair_index(saved)
    assert report.problems == ["model_card.json is not the model card recorded in manifest.json"]
    assert not report.done


def test_a_checkpoint_with_other_codebooks_is_reported(tmp_path: Path) -> None:
    directory = tmp_path / "index"
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"stands for model.pt")
    ArchiveIndex.create_from_codebooks(
        directory,
        unit_codebooks(0),
        card={"backbone": "synthetic"},
        checkpoint_path=checkpoint,
    ).close()

    def other_codebooks(path: Path, manifest: IndexManifest) -> np.ndarray:
        assert path == directory / "model.pt" and manifest.num_codebooks == 8
        return unit_codebooks(1)

    report = repair_index(directory, other_codebooks)
    assert report.problems == ["the codebooks of model.pt are not the ones the codes use"]
    report = repair_index(directory, lambda path, manifest: unit_codebooks(0))
    assert report.repaired
    assert "model.pt: loads, and its codebooks are the codes' codebooks" in report.checked
