"""Plain `histosearch serve` over a sharded index: one uvicorn process, the shards opened in it,
no Ray anywhere; every endpoint answers as over one index of the same items."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from indexer.index.shards import ShardedIndex, shard_of
from indexer.index.store import ArchiveIndex, SearchFilters
from model import Embedder, build_model, save_checkpoint
from tests.service import samples
from tests.service.conftest import API_KEY, SMALL_CARD, LiveServer, kather_items

SHARDS = 3
ITEMS = 240


@dataclass
class Served:
    server: LiveServer
    index_dir: Path
    reference: ArchiveIndex
    embedder: Embedder

    def expected(
        self, data: bytes, k: int, filters: SearchFilters | None = None
    ) -> list[tuple[int, float]]:
        """What one unsharded index of the same items answers for this query."""
        query = Image.open(io.BytesIO(data)).convert("RGB")
        hits = self.reference.search(self.embedder.embed([query]), k, filters)[0]
        return [(hit.id, hit.score) for hit in hits]

    def shards_holding(self, item_id: int) -> list[int]:
        """Shard numbers whose SQLite file holds ``item_id`` (read straight from disk)."""
        holders = []
        for number in range(SHARDS):
            path = self.index_dir / f"shard-{number:03d}" / "metadata.sqlite"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
                rows = database.execute("SELECT id FROM items WHERE id = ?", (item_id,)).fetchall()
            if rows:
                holders.append(number)
        return holders


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("sharded-serve")
    torch.manual_seed(0)
    model = build_model(SMALL_CARD).eval()
    save_checkpoint(model, root / "model.pt")
    embedder = Embedder(model, torch.device("cpu"))
    images, items = kather_items()
    descriptors = embedder.embed(images)
    with ShardedIndex.create(root / "index", root / "model.pt", SHARDS) as sharded:
        sharded.add(descriptors, items)
    reference = ArchiveIndex.create(root / "single", root / "model.pt")
    reference.add(descriptors, items)
    server = LiveServer(root / "index", root / "server.log").start()
    try:
        yield Served(server, root / "index", reference, embedder)
    finally:
        server.stop()
        reference.close()


def post_search(served: Served, data: bytes, **form: str) -> httpx.Response:
    return httpx.post(
        f"{served.server.url}/search", files={"image": ("q.png", data)}, data=form, timeout=60
    )


def test_ready_and_stats_count_the_items_of_every_shard(served: Served) -> None:
    ready = httpx.get(f"{served.server.url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["items"] == ITEMS
    stats = httpx.get(f"{served.server.url}/stats", timeout=30).json()
    assert stats["items"] == ITEMS and sum(stats["labels"].values()) == ITEMS
    assert stats["labels"] == served.reference.stats().labels


def test_search_over_the_shards_ranks_as_one_index_of_the_same_items(served: Served) -> None:
    for number in (0, 57, 130):
        data = samples.encode(samples.tile_rgb(number), "PNG")
        for form, filters in (
            ({"k": "12"}, None),
            ({"k": "12", "label": "02_STROMA"}, SearchFilters(label="02_STROMA")),
            (
                {"k": "12", "exclude_group": "CRC-Prim-HE-03"},
                SearchFilters(exclude_group="CRC-Prim-HE-03"),
            ),
        ):
            response = post_search(served, data, **form)
            assert response.status_code == 200, response.text
            hits = response.json()["results"]
            expected = served.expected(data, 12, filters)
            assert [hit["id"] for hit in hits] == [item_id for item_id, _ in expected]
            assert np.allclose([h["score"] for h in hits], [s for _, s in expected], atol=1e-4)


def test_an_add_lands_in_its_groups_shard_is_found_and_its_delete_empties_that_shard(
    served: Served,
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    data = samples.encode(samples.tile_rgb(5).rotate(90), "PNG")
    created = httpx.post(
        f"{served.server.url}/index",
        headers=auth,
        files={"images": ("new.png", data)},
        data={"group": "patient-new", "label": "new-label"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    item_id = created.json()["items"][0]["id"]
    # The ids one index would give: the next after the 240 stored.
    assert item_id == ITEMS + 1 and created.json()["total_items"] == ITEMS + 1
    assert served.shards_holding(item_id) == [shard_of("patient-new", "", SHARDS)]
    record = httpx.get(f"{served.server.url}/images/{item_id}", timeout=30)
    assert record.status_code == 200 and record.json()["group"] == "patient-new"
    hits = post_search(served, data, k="5", label="new-label").json()["results"]
    assert [hit["id"] for hit in hits] == [item_id]
    assert httpx.get(f"{served.server.url}/ready", timeout=30).json()["items"] == ITEMS + 1

    deleted = httpx.delete(f"{served.server.url}/images/{item_id}", headers=auth, timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert served.shards_holding(item_id) == []
    assert httpx.get(f"{served.server.url}/images/{item_id}", timeout=30).status_code == 404
    assert post_search(served, data, k="5", label="new-label").json()["results"] == []
    assert httpx.get(f"{served.server.url}/stats", timeout=30).json()["items"] == ITEMS


def test_the_server_over_shards_loads_nothing_of_ray(served: Served) -> None:
    """Ray's native core (``_raylet``) is mapped into any process that imported ray."""
    assert served.server.process is not None
    maps = Path(f"/proc/{served.server.process.pid}/maps").read_text()
    assert "faiss" in maps  # the check sees the server's native libraries
    assert "_raylet" not in maps and "/ray/" not in maps
