"""SIGKILL during a stream of acknowledged adds and deletes, with a snapshot after every change:
after each restart every acknowledged add is back, no acknowledged delete is, /stats is right.

Traffic goes to 127.0.0.1 only. ``HISTOSEARCH_CRASH_KILLS`` sets the number of kills (default 8;
benchmarks/service/crash_recovery.py runs 50 and reports the figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from indexer.index.store import ArchiveIndex
from support.crash_cycles import run_crash_cycles, unique_image
from tests.service.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
KILLS = int(os.environ.get("HISTOSEARCH_CRASH_KILLS", "8"))


def test_random_sigkills_lose_no_acknowledged_change(index_copy: Path, tmp_path: Path) -> None:
    outcomes = run_crash_cycles(index_copy, tmp_path, kills=KILLS, seed=1234)
    assert len(outcomes) == KILLS
    for outcome in outcomes:
        assert outcome.restarted, outcome.detail
        assert outcome.adds_lost == [], outcome
        assert outcome.deletes_back == [], outcome
        assert outcome.stats_right, outcome
        # The snapshot on disk was always whole (old or new): nothing needed rebuilding.
        assert not outcome.rebuilt, outcome
    # The kills interrupted real traffic, and the checks looked at it.
    assert sum(outcome.adds_acknowledged for outcome in outcomes) >= KILLS
    assert sum(outcome.deletes_checked for outcome in outcomes) > 0
    with ArchiveIndex.open(index_copy) as reopened:  # what the last server left, opened in-process
        assert len(reopened) == outcomes[-1].expected_items


def test_a_clean_stop_flushes_the_snapshot(index_copy: Path, tmp_path: Path) -> None:
    server = LiveServer(index_copy, tmp_path / "server.log").start()
    try:
        with server.client() as client:
            added = client.post(
                "/index", files={"images": ("a.png", unique_image(9999))}, headers=AUTH
            )
            assert added.status_code == 201
    finally:
        server.stop()
    with ArchiveIndex.open(index_copy) as reopened:
        assert reopened.stats().unsaved_changes == 0
        assert len(reopened) == 241


def committed_codes(index_dir: Path) -> Path:
    generation = json.loads((index_dir / "manifest.json").read_text())["snapshot"]["generation"]
    return index_dir / f"codes.{generation}.faiss"


def test_server_rebuilds_a_damaged_snapshot_from_sqlite(index_copy: Path, tmp_path: Path) -> None:
    committed_codes(index_copy).write_bytes(b"not an index")
    server = LiveServer(index_copy, tmp_path / "server.log").start()
    try:
        with server.client() as client:
            assert client.get("/stats").json()["items"] == 240
            found = client.post("/search", files={"image": ("q.png", unique_image(0))})
            assert found.status_code == 200 and found.json()["results"]
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "does not match" in log or "has 12 bytes" in log
    assert "rebuilding the codes from metadata.sqlite" in log
    with ArchiveIndex.open(index_copy) as reopened:  # the stop wrote a sound snapshot
        assert reopened.opened_from.startswith("snapshot generation")


def test_server_refuses_an_unreadable_database_naming_the_repair_command(
    index_copy: Path, tmp_path: Path
) -> None:
    (index_copy / "metadata.sqlite").write_bytes(b"garbage" * 1000)
    server = LiveServer(index_copy, tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="exited early"):
        server.start(timeout=60)
    log = (tmp_path / "server.log").read_text()
    assert "not a readable SQLite database" in log
    assert f"histosearch repair --index {index_copy}" in log
