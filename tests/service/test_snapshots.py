"""Periodic FAISS snapshots: after enough changes or enough time with changes, off the loop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.index.store import ArchiveIndex
from service.app import create_app
from service.settings import Settings
from service.snapshots import Snapshotter
from tests.service import samples
from tests.service.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class FakeIndex:
    """Counts unsaved changes and flushes like the store; can fail its next flushes."""

    def __init__(self, fail: int = 0) -> None:
        self.unsaved_changes = 0
        self.flushes = 0
        self.flush_threads: list[str] = []
        self.fail = fail
        self.flushed = threading.Event()

    def change(self, count: int = 1) -> None:
        self.unsaved_changes += count

    def flush(self) -> None:
        self.flush_threads.append(threading.current_thread().name)
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        self.flushes += 1
        self.unsaved_changes = 0
        self.flushed.set()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def snapshot_of(index_dir: Path) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads((index_dir / "manifest.json").read_text())["snapshot"]
    return snapshot


def unique_png(number: int) -> bytes:
    tile = samples.tile_rgb(number)
    tile.putpixel((0, 0), (number, 200, 7))
    return samples.encode(tile, "PNG")


# --- the policy on its own -------------------------------------------------------------------


def test_flushes_once_enough_changes_pile_up_on_its_own_thread() -> None:
    index = FakeIndex()
    snapshots = Snapshotter(index, every_changes=3, every_seconds=0)
    snapshots.start()
    try:
        index.change(2)
        snapshots.changed()
        assert not index.flushed.wait(0.3)
        index.change(1)
        snapshots.changed()
        assert index.flushed.wait(5)
    finally:
        snapshots.close()
    assert index.flushes == 1 and snapshots.snapshots == 1
    assert index.flush_threads == ["histosearch-snapshot"]


def test_changes_left_unsaved_by_opening_are_flushed_at_start() -> None:
    index = FakeIndex()
    index.change(5)  # a long replay, or a snapshot rebuilt from SQLite
    snapshots = Snapshotter(index, every_changes=3, every_seconds=0)
    snapshots.start()
    try:
        assert index.flushed.wait(5)
    finally:
        snapshots.close()
    assert index.flushes == 1


def test_server_start_writes_the_snapshot_it_rebuilt_from_sqlite(index_copy: Path) -> None:
    manifest = json.loads((index_copy / "manifest.json").read_text())
    generation = manifest["snapshot"]["generation"]
    (index_copy / f"columns.{generation}.npz").write_bytes(b"damaged")
    with make_client(index_copy, snapshot_every_changes=1) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert engine.index.opened_from.startswith("rebuilt from metadata.sqlite (240 items)")
        assert wait_for(lambda: snapshot_of(index_copy)["generation"] > generation)
        # What a restart after a crash right now would find: a sound snapshot, nothing to replay.
        with ArchiveIndex.open(index_copy) as reopened:
            assert reopened.opened_from.startswith("snapshot generation")
            assert reopened.unsaved_changes == 0 and len(reopened) == 240


def test_flushes_after_the_interval_only_when_something_changed() -> None:
    index = FakeIndex()
    snapshots = Snapshotter(index, every_changes=0, every_seconds=0.1)
    snapshots.start()
    try:
        time.sleep(0.5)
        assert index.flushes == 0  # several intervals passed, nothing to save
        index.change(1)  # below any count: only the clock can trigger this one
        assert index.flushed.wait(5)
    finally:
        snapshots.close()
    assert index.flushes == 1


def test_a_failed_flush_is_logged_and_retried_later(caplog: pytest.LogCaptureFixture) -> None:
    index = FakeIndex(fail=1)
    snapshots = Snapshotter(index, every_changes=1, every_seconds=0.2)
    snapshots.start()
    try:
        index.change(1)
        snapshots.changed()
        assert wait_for(lambda: snapshots.failures == 1)
        assert index.flushes == 0
        assert index.flushed.wait(5)  # the retry, once the back-off is over
    finally:
        snapshots.close()
    assert index.flushes == 1 and snapshots.failures == 1
    assert "snapshot failed" in caplog.text


def test_both_triggers_off_starts_no_thread() -> None:
    index = FakeIndex()
    snapshots = Snapshotter(index, every_changes=0, every_seconds=0)
    snapshots.start()
    index.change(5)
    snapshots.changed()
    snapshots.close()
    assert not snapshots.enabled and index.flushes == 0


def test_negative_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Snapshotter(FakeIndex(), every_changes=-1, every_seconds=0)


# --- through the API, on a real index ---------------------------------------------------------


def make_client(index_dir: Path, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "index_dir": index_dir,
        "api_key": API_KEY,
        "workers": 1,
        "device": "cpu",
        "snapshot_every_seconds": 0,
    }
    options.update(overrides)
    return TestClient(create_app(Settings(**options)))


def test_the_snapshot_follows_additions_every_n_changes(index_copy: Path) -> None:
    before = snapshot_of(index_copy)
    with make_client(index_copy, snapshot_every_changes=2) as client:
        first = client.post("/index", files={"images": ("a.png", unique_png(1))}, headers=AUTH)
        assert first.status_code == 201, first.text
        time.sleep(0.3)
        assert snapshot_of(index_copy) == before  # one change: below the threshold

        second = client.post("/index", files={"images": ("b.png", unique_png(2))}, headers=AUTH)
        assert second.status_code == 201, second.text
        newest = second.json()["items"][0]["id"]
        assert wait_for(lambda: snapshot_of(index_copy)["last_item_id"] == newest)
        snapshot = snapshot_of(index_copy)
        assert snapshot["items"] == before["items"] + 2
        assert snapshot["generation"] > before["generation"]
        assert (index_copy / f"codes.{snapshot['generation']}.faiss").is_file()
        assert not (index_copy / f"codes.{before['generation']}.faiss").exists()
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert wait_for(lambda: engine.index.unsaved_changes == 0)

        # What a restart after a crash right now would find: nothing left to replay.
        with ArchiveIndex.open(index_copy) as reopened:
            assert reopened.unsaved_changes == 0 and len(reopened) == before["items"] + 2


def test_the_snapshot_follows_removals_after_the_interval(index_copy: Path) -> None:
    with make_client(index_copy, snapshot_every_changes=0, snapshot_every_seconds=0.2) as client:
        removal_seq = snapshot_of(index_copy)["last_removal_seq"]
        assert client.delete("/images/1", headers=AUTH).status_code == 200
        assert wait_for(lambda: snapshot_of(index_copy)["last_removal_seq"] > removal_seq)
        engine = client.app.state.engine  # type: ignore[attr-defined]
        assert wait_for(lambda: engine.index.unsaved_changes == 0)


def test_no_periodic_snapshot_without_changes(index_copy: Path) -> None:
    before = (index_copy / "manifest.json").read_bytes()
    with make_client(index_copy, snapshot_every_changes=1, snapshot_every_seconds=0.1) as client:
        assert client.post("/search", files={"image": ("q.png", unique_png(3))}).status_code == 200
        time.sleep(0.4)
        assert (index_copy / "manifest.json").read_bytes() == before
