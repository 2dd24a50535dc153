"""SIGKILL during a stream of acknowledged additions: after restart each acknowledged one is back.

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from indexer.index.store import ArchiveIndex
from tests.service import samples
from tests.service.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def unique_image(number: int) -> bytes:
    tile = samples.tile_rgb(number % 240)
    # One changed pixel makes each upload new content, so none is a duplicate of the archive.
    tile.putpixel((number % tile.width, 0), (number % 256, 17, 99))
    return samples.encode(tile, "PNG")


def add_until_stopped(
    server: LiveServer, stop: threading.Event, acknowledged: dict[int, int], attempted: list[int]
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        number = 0
        while not stop.is_set():
            attempted.append(number)
            try:
                response = client.post(
                    "/index",
                    files={"images": (f"crash-{number}.png", unique_image(number))},
                    data={"label": f"crash-{number}", "source": f"crash/{number}"},
                    headers=AUTH,
                )
            except httpx.TransportError:
                return  # the server died mid-request: this one was never acknowledged
            if response.status_code == 201:
                acknowledged[number] = response.json()["items"][0]["id"]
            number += 1


def test_acknowledged_additions_survive_sigkill(index_copy: Path, tmp_path: Path) -> None:
    server = LiveServer(index_copy, tmp_path / "server.log").start()
    acknowledged: dict[int, int] = {}
    attempted: list[int] = []
    stop = threading.Event()
    adder = threading.Thread(target=add_until_stopped, args=(server, stop, acknowledged, attempted))
    adder.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # mid-stream: the adder has a request in flight
    stop.set()
    adder.join(timeout=60)
    assert len(acknowledged) >= 15

    restarted = LiveServer(index_copy, tmp_path / "restart.log").start()
    try:
        with restarted.client() as client:
            items = client.get("/stats").json()["items"]
            # Acknowledged ones must all be there; the one in flight at the kill may or may not be.
            assert 240 + len(acknowledged) <= items <= 240 + len(attempted)
            for number, item_id in acknowledged.items():
                metadata = client.get(f"/images/{item_id}")
                assert metadata.status_code == 200, metadata.text
                assert metadata.json()["label"] == f"crash-{number}"
                found = client.post(
                    "/search",
                    files={"image": ("q.png", unique_image(number))},
                    data={"k": "1", "label": f"crash-{number}"},
                )
                assert [hit["id"] for hit in found.json()["results"]] == [item_id]
    finally:
        restarted.stop()

    with sqlite3.connect(index_copy / "metadata.sqlite") as database:
        (rows,) = database.execute("SELECT COUNT(*) FROM items").fetchone()
    with ArchiveIndex.open(index_copy) as reopened:  # refuses if codes and metadata disagree
        assert len(reopened) == rows == items


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


def test_server_refuses_to_start_on_a_damaged_index(index_copy: Path, tmp_path: Path) -> None:
    (index_copy / "codes.faiss").write_bytes(b"not an index")
    server = LiveServer(index_copy, tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="exited early"):
        server.start(timeout=60)
    assert "codes.faiss" in (tmp_path / "server.log").read_text()
