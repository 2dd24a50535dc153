"""SIGKILL a real server at random moments while adds and deletes stream in, restart, check.

One index directory lives through every cycle: each cycle restarts `histosearch serve` on it,
checks what the previous kill left (against a ledger of acknowledged changes), streams adds and
deletes from one client until a random moment, then SIGKILLs the server. With a snapshot after
every change (``HISTOSEARCH_SNAPSHOT_EVERY_CHANGES=1``) kills land in the middle of snapshots.

Used by tests/service/test_crash_recovery.py (a few cycles) and
benchmarks/service/crash_recovery.py (50).
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support.kather import encode, tile_rgb
from support.live_server import API_KEY, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SNAPSHOT_EVERY_CHANGE = {"HISTOSEARCH_SNAPSHOT_EVERY_CHANGES": "1"}
# One change in this many is a delete of an item added earlier.
DELETE_SHARE = 1 / 3
# Earlier acknowledged adds and deletes re-checked each cycle, besides all of the last cycle's.
RECHECK_SAMPLE = 10


def unique_image(number: int) -> bytes:
    tile = tile_rgb(number % 240)
    # One changed pixel makes each upload new content, so none is a duplicate of the archive.
    tile.putpixel((number % tile.width, 0), (number % 256, 17, 99))
    return encode(tile, "PNG")


@dataclass(slots=True)
class Ledger:
    """Acknowledged changes so far: alive item id -> upload number, and deleted ids."""

    base_items: int
    alive: dict[int, int] = field(default_factory=dict)
    deleted: dict[int, int] = field(default_factory=dict)
    next_number: int = 0
    # The request in flight when the server died: ("add", number) or ("delete", id).
    in_flight: tuple[str, int] | None = None

    @property
    def expected_items(self) -> int:
        return self.base_items + len(self.alive)


@dataclass(slots=True)
class CycleOutcome:
    """What one restart found about the kill before it."""

    cycle: int
    restarted: bool
    adds_checked: int = 0
    deletes_checked: int = 0
    adds_lost: list[int] = field(default_factory=list)
    deletes_back: list[int] = field(default_factory=list)
    stats_items: int | None = None
    sqlite_items: int | None = None
    expected_items: int | None = None
    adds_acknowledged: int = 0
    deletes_acknowledged: int = 0
    kill_after_s: float = 0.0
    # Files of an interrupted snapshot found after the kill (other generations, temporaries).
    leftovers: list[str] = field(default_factory=list)
    # Whether the restart had to rebuild the snapshot from SQLite (a snapshot that did not match).
    rebuilt: bool = False
    detail: str = ""

    @property
    def stats_right(self) -> bool:
        return self.stats_items == self.sqlite_items == self.expected_items

    @property
    def clean(self) -> bool:
        return self.restarted and not self.adds_lost and not self.deletes_back and self.stats_right


def stream_changes(
    server: LiveServer, ledger: Ledger, stop: threading.Event, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Adds and deletes, one at a time, until ``stop`` or the server dies; returns the ids of the
    acknowledged adds and deletes of this stream."""
    added: list[int] = []
    deleted: list[int] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        while not stop.is_set():
            try:
                if ledger.alive and rng.random() < DELETE_SHARE:
                    item_id = rng.choice(list(ledger.alive))
                    ledger.in_flight = ("delete", item_id)
                    response = client.delete(f"/images/{item_id}", headers=AUTH)
                    if response.status_code == 200:
                        ledger.deleted[item_id] = ledger.alive.pop(item_id)
                        deleted.append(item_id)
                else:
                    number = ledger.next_number
                    ledger.next_number += 1
                    ledger.in_flight = ("add", number)
                    response = client.post(
                        "/index",
                        files={"images": (f"crash-{number}.png", unique_image(number))},
                        data={"label": f"crash-{number}", "source": f"crash/{number}"},
                        headers=AUTH,
                    )
                    if response.status_code == 201:
                        item_id = response.json()["items"][0]["id"]
                        ledger.alive[item_id] = number
                        added.append(item_id)
            except httpx.TransportError:
                return added, deleted  # the server died with this request unanswered
            ledger.in_flight = None
    return added, deleted


def found_by_label(client: httpx.Client, number: int) -> list[int]:
    """Ids a search restricted to the upload's own label returns (the table, not just SQLite)."""
    response = client.post(
        "/search",
        files={"image": ("q.png", unique_image(number))},
        data={"k": "1", "label": f"crash-{number}"},
    )
    response.raise_for_status()
    return [hit["id"] for hit in response.json()["results"]]


def resolve_in_flight(client: httpx.Client, ledger: Ledger) -> None:
    """The unanswered request may or may not have committed: take what the index says."""
    if ledger.in_flight is None:
        return
    kind, value = ledger.in_flight
    ledger.in_flight = None
    if kind == "add":
        for item_id in found_by_label(client, value):
            ledger.alive[item_id] = value
    elif client.get(f"/images/{value}").status_code == 404:
        ledger.deleted[value] = ledger.alive.pop(value)


def check_restart(
    server: LiveServer,
    ledger: Ledger,
    outcome: CycleOutcome,
    recent: tuple[list[int], list[int]],
    rng: random.Random,
) -> None:
    """Every acknowledged add of the last cycle (and a sample of older ones) is searchable,
    every acknowledged delete is gone, and /stats agrees with SQLite and the ledger."""
    with server.client() as client:
        resolve_in_flight(client, ledger)
        recent_adds = [item_id for item_id in recent[0] if item_id in ledger.alive]
        older_adds = [item_id for item_id in ledger.alive if item_id not in set(recent_adds)]
        adds = recent_adds + rng.sample(older_adds, min(RECHECK_SAMPLE, len(older_adds)))
        for item_id in adds:
            if found_by_label(client, ledger.alive[item_id]) != [item_id]:
                outcome.adds_lost.append(item_id)
        older_deletes = [item_id for item_id in ledger.deleted if item_id not in set(recent[1])]
        deletes = recent[1] + rng.sample(older_deletes, min(RECHECK_SAMPLE, len(older_deletes)))
        for item_id in deletes:
            if client.get(f"/images/{item_id}").status_code != 404:
                outcome.deletes_back.append(item_id)
        outcome.adds_checked, outcome.deletes_checked = len(adds), len(deletes)
        outcome.stats_items = client.get("/stats").json()["items"]
    with sqlite3.connect(server.index_dir / "metadata.sqlite") as database:
        outcome.sqlite_items = database.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    outcome.expected_items = ledger.expected_items


def run_crash_cycles(
    index_dir: Path, workdir: Path, kills: int, seed: int = 0, max_kill_after_s: float = 2.0
) -> list[CycleOutcome]:
    """``kills`` SIGKILLs at random moments, each followed by a restart and its checks.

    Stops early if a restart fails (that outcome says why).
    """
    kill_times, traffic = random.Random(seed), random.Random(seed + 1)
    with contextlib.closing(sqlite3.connect(index_dir / "metadata.sqlite")) as database:
        ledger = Ledger(base_items=database.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    server = LiveServer(index_dir, workdir / "server-0.log", env=SNAPSHOT_EVERY_CHANGE).start()
    outcomes: list[CycleOutcome] = []
    for cycle in range(1, kills + 1):
        outcome = CycleOutcome(cycle, restarted=False)
        outcome.kill_after_s = kill_times.uniform(0.2, max_kill_after_s)
        recent = stream_then_kill(server, ledger, outcome.kill_after_s, traffic)
        outcome.adds_acknowledged, outcome.deletes_acknowledged = map(len, recent)
        outcome.leftovers = leftover_files(index_dir)
        outcomes.append(outcome)
        log = workdir / f"server-{cycle}.log"
        server = LiveServer(index_dir, log, env=SNAPSHOT_EVERY_CHANGE)
        try:
            server.start(timeout=120)
        except (RuntimeError, TimeoutError) as error:
            server.kill()
            outcome.detail = str(error)[-2000:]
            return outcomes
        outcome.restarted = True
        outcome.rebuilt = "rebuilding the codes" in log.read_text()
        check_restart(server, ledger, outcome, recent, traffic)
    server.stop()
    return outcomes


def leftover_files(index_dir: Path) -> list[str]:
    """Snapshot files the committed manifest does not name: signs of an interrupted snapshot."""
    snapshot = json.loads((index_dir / "manifest.json").read_text())["snapshot"]
    committed = {f"codes.{snapshot['generation']}.faiss", f"columns.{snapshot['generation']}.npz"}
    return sorted(
        path.name
        for path in index_dir.iterdir()
        if path.name.startswith(("codes", "columns", ".codes", ".columns", ".manifest"))
        and path.name not in committed
    )


def stream_then_kill(
    server: LiveServer, ledger: Ledger, kill_after_s: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Stream changes from another thread and SIGKILL the server after ``kill_after_s``."""
    stop = threading.Event()
    result: list[tuple[list[int], list[int]]] = []
    client = threading.Thread(
        target=lambda: result.append(stream_changes(server, ledger, stop, rng))
    )
    client.start()
    time.sleep(kill_after_s)
    server.kill()  # mid-stream: a request is usually in flight
    stop.set()
    client.join(timeout=120)
    return result[0] if result else ([], [])
