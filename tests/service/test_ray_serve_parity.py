"""On Ray Serve, the engine has every setting the plain server gives it: slide-region searches,
tiled region uploads, item searches and the per-client request cap answer as without Ray.

The index is `build_slide_index`'s (two slides, 150 px tiles at 0.5 um/px), copied into a sharded
index with the same items in the same order (so the same ids) and the same slide registry. The
reference for every answer is the plain app over the unsharded index.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openslide
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from indexer.index.records import NewItem
from indexer.index.shards import ShardedIndex
from indexer.index.slides import SlideRegistry, read_slide_tile
from indexer.index.store import ArchiveIndex
from model import Embedder, load_checkpoint
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import API_KEY, free_port
from tests.service.slide_index import build_slide_index

pytestmark = pytest.mark.ray
SHARDS = 2
# One request in flight per client: concurrent searches from one address must meet 429.
PER_CLIENT = 1
CONCURRENT = 6


@dataclass
class Served:
    ray_url: str
    plain: TestClient
    slide_path: Path
    slide_id: str


def sharded_copy(index_dir: Path, target: Path, archive: Path) -> None:
    """The items of ``index_dir`` re-embedded from their slides into a sharded index, in id
    order, and its slide registry copied beside the shards."""
    with ArchiveIndex.open(index_dir) as index:
        assert index.checkpoint_path is not None
        checkpoint = index.checkpoint_path
        ids = range(1, len(index) + 1)
        records = [index.get(item_id) for item_id in ids]
        thumbnails = [index.thumbnail(item_id) for item_id in ids]
    tiles, items = [], []
    for record, thumbnail in zip(records, thumbnails, strict=True):
        assert record is not None and record.tile is not None
        slide = openslide.OpenSlide(str(archive / record.source))
        level, tile_px = int(record.extra["level"]), int(record.extra["tile_px"])
        tiles.append(read_slide_tile(slide, level, record.tile, tile_px))
        items.append(
            NewItem(
                source=record.source,
                archive=record.archive,
                content_hash=record.content_hash,
                label=record.label,
                group=record.group,
                dataset=record.dataset,
                tile=record.tile,
                source_size=record.source_size,
                thumbnail=thumbnail,
                extra=dict(record.extra),
            )
        )
    model = load_checkpoint(checkpoint, map_location=torch.device("cpu"))
    descriptors = Embedder(model, torch.device("cpu")).embed(tiles)
    with ShardedIndex.create(target, checkpoint, SHARDS) as sharded:
        outcomes = sharded.add(descriptors, items)
    assert [outcome.id for outcome in outcomes] == list(ids)
    with SlideRegistry(index_dir, create=False) as source, SlideRegistry(target) as copy:
        for slide_record in source.all():
            copy.put(slide_record)


@pytest.fixture(scope="module")
def served(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    from service.ray_serve import RayServeConfig, build_application

    root = tmp_path_factory.mktemp("ray-serve-parity")
    index_dir, slides = build_slide_index(root, codewords_from_slide_a=True)
    sharded_copy(index_dir, root / "sharded", root / "archive")
    options: dict[str, Any] = {
        "api_key": SecretStr(API_KEY),
        "device": "cpu",
        "workers": 2,
        "archive_roots": [root],
        "max_requests_per_client": PER_CLIENT,
    }
    with SlideRegistry(index_dir, create=False) as registry:
        slide_id = next(r.slide_id for r in registry.all() if "slide-a" in r.source)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = RayServeConfig(embedder_cpus=0.5, shard_cpus=0.25, ingress_cpus=0.25)
    ray_settings = Settings(index_dir=root / "sharded", **options)
    serve.run(build_application(ray_settings, config), name="histosearch", route_prefix="/")
    try:
        with TestClient(create_app(Settings(index_dir=index_dir, **options))) as plain:
            yield Served(f"http://127.0.0.1:{port}", plain, slides["slide-a"], slide_id)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]


def comparable(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    return {
        "results": [(r["id"], round(r["score"], 4)) for r in body["results"]],
        "slides": [(s["slide_id"], s["hit_count"]) for s in body["slides"]],
        "query": body["query"],
        "tiles": (body["query_tiles"], body["tissue_tiles"]),
    }


def region(slide_id: str, box: tuple[int, int, int, int]) -> dict[str, str]:
    x, y, width, height = box
    return {"slide_id": slide_id, "x": str(x), "y": str(y), "width": str(width),
            "height": str(height)}  # fmt: skip


def region_png(path: Path, box: tuple[int, int, int, int]) -> bytes:
    """A level-0 box read at level 1 (0.5 um/px, the index's), as PNG."""
    x, y, width, height = box
    pixels = openslide.OpenSlide(str(path)).read_region((x, y), 1, (width // 2, height // 2))
    buffer = io.BytesIO()
    pixels.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("box", [(0, 0, 1200, 600), (150, 300, 900, 450)])
def test_a_slide_region_search_on_ray_answers_as_the_plain_server(served, box):
    fields = {**region(served.slide_id, box), "k": "12"}
    on_ray = httpx.post(f"{served.ray_url}/search", data=fields, timeout=120)
    assert comparable(on_ray) == comparable(served.plain.post("/search", data=fields))
    assert on_ray.json()["query_tiles"] > 1


def test_a_large_upload_on_ray_is_tiled_as_by_the_plain_server(served):
    data = region_png(served.slide_path, (0, 0, 1200, 1200))
    files, fields = {"image": ("region.png", data)}, {"k": "12", "mpp": "0.5"}
    on_ray = httpx.post(f"{served.ray_url}/search", files=files, data=fields, timeout=120)
    assert comparable(on_ray) == comparable(served.plain.post("/search", files=files, data=fields))
    assert on_ray.json()["query_tiles"] == on_ray.json()["tissue_tiles"] > 1


def test_an_item_search_on_ray_answers_as_the_plain_server(served):
    fields = {"item_id": "3", "k": "12"}
    on_ray = httpx.post(f"{served.ray_url}/search", data=fields, timeout=120)
    assert comparable(on_ray) == comparable(served.plain.post("/search", data=fields))


def test_the_per_client_request_cap_holds_on_ray(served):
    start = threading.Barrier(CONCURRENT)
    statuses: list[int] = []
    fields = {**region(served.slide_id, (0, 0, 1200, 1200)), "k": "12"}

    def search() -> None:
        start.wait()
        response = httpx.post(f"{served.ray_url}/search", data=fields, timeout=120)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=search) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 200 in statuses and 429 in statuses, statuses
    assert set(statuses) <= {200, 429}
