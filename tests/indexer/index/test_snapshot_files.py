"""A snapshot commits as one: after a crash at any step the index reopens with every item.

Each test stops a `flush` at one step the way a SIGKILL would (no clean-up runs, temporaries stay
on disk), abandons the index without closing it, and reopens the directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import indexer.index.snapshot_files as snapshot_files
import indexer.index.store as store
from indexer.index.pq import adc_scores, assign_codes, lookup_tables
from indexer.index.store import ArchiveIndex
from model.atomic import atomic_write
from tests.indexer.index_helpers import descriptors_near_codewords, items, new_index, unit_codebooks

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = descriptors_near_codewords(160, unit_codebooks(0), seed=11)


class Killed(BaseException):
    """Stands for SIGKILL: raised mid-flush, caught by nothing in the library."""


def killed_on(names: Callable[[str], bool]) -> Callable[[Path, Callable[[Path], object]], None]:
    """An `atomic_write` that dies after writing the temporary of a matching file, before the
    rename (the temporary stays behind, as after a real kill)."""

    def write(path: Path, writer: Callable[[Path], object]) -> None:
        if not names(path.name):
            atomic_write(path, writer)
            return
        writer(path.parent / f".{path.name}.killed")
        raise Killed

    return write


def die(*_: object) -> None:
    raise Killed


def index_with_unsaved_changes(directory: Path) -> tuple[ArchiveIndex, set[int]]:
    """100 items snapshotted, then 60 more added and 7 removed (acknowledged, not snapshotted)."""
    index = new_index(directory)
    index.add(VECTORS[:100], items(100))
    index.remove([2, 3, 40])
    index.flush()
    index.add(VECTORS[100:], items(60, start=100))
    index.remove([5, 50, 101, 159])
    return index, set(range(1, 161)) - {2, 3, 40, 5, 50, 101, 159}


def abandon(index: ArchiveIndex) -> None:
    """The process is gone: nothing flushes, the database connection just ends."""
    index._metadata.close()


def snapshot_files_on_disk(directory: Path) -> set[str]:
    return {
        path.name
        for path in directory.iterdir()
        if path.name.startswith(("codes", "columns", ".codes", ".columns", ".manifest"))
    }


def assert_holds_exactly(directory: Path, expected: set[int]) -> ArchiveIndex:
    index = ArchiveIndex.open(directory)
    assert len(index) == len(expected)
    scores, ids = index.search_arrays(VECTORS, 1)
    codes = assign_codes(VECTORS, index.codebooks)
    present = np.array(sorted(expected))
    exact = adc_scores(lookup_tables(VECTORS, index.codebooks), codes[present - 1])
    # Brute force over the acknowledged items: the best score per query must be theirs.
    np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=1e-4)
    assert set(ids[:, 0].tolist()) <= expected
    assert {hit.id for hit in index.search(VECTORS[:1], 500)[0]} == expected
    return index


CRASH_POINTS = {
    "while writing the new codes file": lambda mp: mp.setattr(
        snapshot_files, "atomic_write", killed_on(lambda name: name.startswith("codes."))
    ),
    "after the new codes, while writing the new columns": lambda mp: mp.setattr(
        snapshot_files, "atomic_write", killed_on(lambda name: name.startswith("columns."))
    ),
    "after the new generation's files, while writing the manifest": lambda mp: mp.setattr(
        store, "atomic_write", killed_on(lambda name: name == "manifest.json")
    ),
    "after the manifest, before deleting the old generation": lambda mp: mp.setattr(
        store, "remove_other_generations", die
    ),
}


@pytest.mark.parametrize("crash_point", list(CRASH_POINTS))
def test_a_crash_at_any_step_of_a_snapshot_loses_no_acknowledged_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_point: str
) -> None:
    directory = tmp_path / "index"
    index, expected = index_with_unsaved_changes(directory)
    generation_before = json.loads((directory / "manifest.json").read_text())["snapshot"]
    with monkeypatch.context() as patch:
        CRASH_POINTS[crash_point](patch)
        with pytest.raises(Killed):
            index.flush()
    abandon(index)

    committed = json.loads((directory / "manifest.json").read_text())["snapshot"]
    new_generation = committed["generation"] == generation_before["generation"] + 1
    assert new_generation == (
        crash_point == "after the manifest, before deleting the old generation"
    )
    reopened = assert_holds_exactly(directory, expected)
    # The old snapshot plus the SQLite journal, or the new snapshot alone: never a mix.
    assert reopened.opened_from.startswith(f"snapshot generation {committed['generation']}")
    assert (reopened.unsaved_changes == 0) == new_generation
    # Opening deletes nothing (another process may be writing a snapshot); the next one
    # clears the leftovers of the interrupted one.
    reopened.flush()
    reopened.close()
    generation = json.loads((directory / "manifest.json").read_text())["snapshot"]["generation"]
    assert snapshot_files_on_disk(directory) == {
        f"codes.{generation}.faiss",
        f"columns.{generation}.npz",
    }
    assert_holds_exactly(directory, expected).close()


def test_a_truncated_codes_file_is_rebuilt_with_every_item(tmp_path: Path) -> None:
    directory = tmp_path / "index"
    index, expected = index_with_unsaved_changes(directory)
    index.flush()
    abandon(index)
    generation = json.loads((directory / "manifest.json").read_text())["snapshot"]["generation"]
    codes = directory / f"codes.{generation}.faiss"
    codes.write_bytes(codes.read_bytes()[: codes.stat().st_size // 2])
    reopened = assert_holds_exactly(directory, expected)
    assert reopened.opened_from.startswith("rebuilt from metadata.sqlite")
    reopened.close()
    assert_holds_exactly(directory, expected).close()


def test_snapshots_after_every_change_keep_one_generation_on_disk(tmp_path: Path) -> None:
    with new_index(tmp_path / "index") as index:
        for start in range(0, 30, 10):
            index.add(VECTORS[start : start + 10], items(10, start=start))
            index.flush()
            index.remove([start + 1])
            index.flush()
        assert index.snapshot is not None
        generation = index.snapshot.generation
    assert generation == 1 + 6 + 0  # create, then six flushes; close had nothing left to write
    assert snapshot_files_on_disk(tmp_path / "index") == {
        f"codes.{generation}.faiss",
        f"columns.{generation}.npz",
    }


def test_an_index_written_in_format_1_opens_and_moves_to_generations(tmp_path: Path) -> None:
    """The fixture was written by the code of format 1 (fixed-name ``codes.faiss`` and
    ``columns.npz``): 30 items, 2 removed, snapshotted; then 10 added and 1 removed, unsaved."""
    directory = tmp_path / "index"
    shutil.copytree(FIXTURES / "format1-index", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "codes.faiss" in manifest["snapshot"]
    vectors = descriptors_near_codewords(40, unit_codebooks(0), seed=3)
    expected = set(range(1, 41)) - {4, 9, 12}
    with ArchiveIndex.open(directory) as index:
        assert index.opened_from == (
            "snapshot generation 0 (28 items) with 10 adds and 1 removals replayed from "
            "metadata.sqlite"
        )
        assert len(index) == len(expected)
        codes = assign_codes(vectors, index.codebooks)
        present = np.array(sorted(expected))
        exact = adc_scores(lookup_tables(vectors, index.codebooks), codes[present - 1])
        scores, _ = index.search_arrays(vectors, 1)
        np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=1e-4)
        record = index.get(7)
        assert record is not None and record.source == "slide-6/tile-6.png"
        assert record.archive is None and record.display_source == "slide-6/tile-6.png"
    rewritten = json.loads((directory / "manifest.json").read_text())
    assert rewritten["format_version"] == 2 and rewritten["snapshot"]["generation"] == 1
    assert snapshot_files_on_disk(directory) == {"codes.1.faiss", "columns.1.npz"}
    with ArchiveIndex.open(directory) as again:
        assert len(again) == len(expected) and again.unsaved_changes == 0
