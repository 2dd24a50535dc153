"""The app on Ray Serve over a sharded index: one ingress, an embedder, a deployment per shard."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from pydantic import SecretStr

from indexer.index.metadata import FinishedSource
from indexer.index.shards import ShardedIndex, shard_of
from indexer.index.store import ArchiveIndex, SearchFilters
from model import Embedder, build_model, save_checkpoint
from service.settings import Settings
from tests.indexer.index_helpers import unit_codebooks
from tests.service import samples
from tests.service.conftest import API_KEY, SMALL_CARD, free_port, kather_items

pytestmark = pytest.mark.ray
SHARDS = 3
GROUP = "CRC-Prim-HE-03"


class Deployed:
    def __init__(self, url: str, root: Path, reference: ArchiveIndex, embedder: Embedder):
        self.url, self.root, self.reference, self.embedder = url, root, reference, embedder

    def expected(self, data: bytes, k: int, filters: SearchFilters | None = None) -> list[Any]:
        """What one process with one unsharded index answers for this query."""
        import io

        from PIL import Image

        query = Image.open(io.BytesIO(data)).convert("RGB")
        hits = self.reference.search(self.embedder.embed([query]), k, filters)[0]
        return [(hit.id, hit.score) for hit in hits]


@pytest.fixture(scope="module")
def deployed(ray_cluster, tmp_path_factory) -> Iterator[Deployed]:
    from ray import serve

    from service.ray_serve import RayServeConfig, build_application

    root = tmp_path_factory.mktemp("ray-serve")
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
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings(
        index_dir=root / "index", api_key=SecretStr(API_KEY), device="cpu", workers=2
    )
    config = RayServeConfig(embedder_cpus=0.5, shard_cpus=0.25, ingress_cpus=0.25)
    serve.run(build_application(settings, config), name="histosearch", route_prefix="/")
    yield Deployed(f"http://127.0.0.1:{port}", root, reference, embedder)
    serve.shutdown()  # type: ignore[no-untyped-call]
    reference.close()


def test_search_on_ray_shards_ranks_as_one_process_with_one_index(deployed):
    for number in (0, 57, 130):
        data = samples.encode(samples.tile_rgb(number), "PNG")
        for form, filters in (
            ({"k": "12"}, None),
            (
                {"k": "12", "exclude_group": "CRC-Prim-HE-03"},
                SearchFilters(exclude_group="CRC-Prim-HE-03"),
            ),
        ):
            response = httpx.post(
                f"{deployed.url}/search", files={"image": ("q.png", data)}, data=form, timeout=60
            )
            assert response.status_code == 200, response.text
            hits = response.json()["results"]
            expected = deployed.expected(data, 12, filters)
            assert [hit["id"] for hit in hits] == [item_id for item_id, _ in expected]
            assert np.allclose([h["score"] for h in hits], [s for _, s in expected], atol=1e-4)


def test_slide_and_case_queries_on_ray_shards_rank_as_one_process(deployed):
    from indexer.index.slide_archive import IndexSlides, SlideSearchRequest, search_slides

    slides = IndexSlides.of_index(deployed.reference)
    catalog = slides.catalog
    slide_id = catalog.slide_ids[int(catalog.slides_of_group(GROUP)[0])]
    for form, request in (
        ({"query_slide_id": slide_id}, SlideSearchRequest(slide_id=slide_id)),
        (
            {"query_group": GROUP, "group_by": "group"},
            SlideSearchRequest(group=GROUP, group_by="group"),
        ),
    ):
        response = httpx.post(f"{deployed.url}/search", data={**form, "k": "5"}, timeout=120)
        assert response.status_code == 200, response.text
        found = response.json()["results"]
        expected = search_slides(slides, deployed.reference, request, 5).ranked
        assert [result["id"] for result in found] == [target.target for target in expected]
        assert np.allclose([r["score"] for r in found], [t.score for t in expected], atol=1e-4)
        assert all(result["group"] != GROUP for result in found)


def test_ready_and_stats_count_every_shard(deployed):
    ready = httpx.get(f"{deployed.url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["items"] == 240
    stats = httpx.get(f"{deployed.url}/stats", timeout=30).json()
    assert stats["items"] == 240 and sum(stats["labels"].values()) == 240


def test_an_add_is_durable_in_its_groups_shard_when_acknowledged_and_can_be_deleted(deployed):
    data = samples.encode(samples.tile_rgb(3).rotate(90), "PNG")
    response = httpx.post(
        f"{deployed.url}/index",
        headers={"Authorization": f"Bearer {API_KEY}"},
        files={"images": ("new.png", data)},
        data={"group": "patient-new", "label": "new-label"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    item_id = response.json()["items"][0]["id"]
    assert item_id == 241 and response.json()["total_items"] == 241
    holders = []
    for number in range(SHARDS):
        path = deployed.root / "index" / f"shard-{number:03d}" / "metadata.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
            found = database.execute("SELECT grp FROM items WHERE id = ?", (item_id,)).fetchall()
        if found:
            holders.append(number)
    assert holders == [shard_of("patient-new", "", SHARDS)]

    def search(**form: str) -> list[dict[str, Any]]:
        found = httpx.post(
            f"{deployed.url}/search", files={"image": ("q.png", data)}, data=form, timeout=60
        )
        results: list[dict[str, Any]] = found.json()["results"]
        return results

    (mine,) = search(k="5", label="new-label")
    assert mine["id"] == item_id and mine["group"] == "patient-new"
    # Its own code is the best any item can score for it (a random model gives many tiles
    # that same code, so it may be tied with older, smaller ids).
    assert search(k="5")[0]["score"] == mine["score"]
    deleted = httpx.delete(
        f"{deployed.url}/images/{item_id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert deleted.status_code == 200, deleted.text
    assert httpx.get(f"{deployed.url}/images/{item_id}", timeout=30).status_code == 404


def test_bad_uploads_writes_without_a_key_and_the_page_behave_as_in_one_process(deployed):
    bad = httpx.post(
        f"{deployed.url}/search", files={"image": ("x.png", b"not an image")}, timeout=30
    )
    assert bad.status_code in (400, 415, 422) and set(bad.json()) >= {"code", "detail"}
    refused = httpx.post(f"{deployed.url}/index", files={"images": ("a.png", b"x")}, timeout=30)
    assert refused.status_code == 401
    page = httpx.get(f"{deployed.url}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_a_shard_clients_journal_reads_and_writes_its_shards_journal(deployed):
    from ray import serve

    from service.ray_serve import ShardClient

    name = "shard-001"
    client = ShardClient(serve.get_deployment_handle(name, app_name="histosearch"), name)
    assert client.journal.finished_source("slides/a.svs") is None
    client.journal.mark_sources_finished([FinishedSource("slides/a.svs", "hash-a", 4, 1)])
    assert client.journal.finished_source("slides/a.svs") == "hash-a"
    assert client.journal.source_with_hash("hash-a") == "slides/a.svs"
    path = deployed.root / "index" / name / "metadata.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
        stored = database.execute("SELECT source FROM sources").fetchall()
    assert stored == [("slides/a.svs",)]


def test_serve_on_an_unreachable_ray_cluster_fails_fast_naming_it(tmp_path, caplog):
    pytest.importorskip("ray", reason="ray is not installed: install the `ray` extra")
    from indexer.cli import main

    sharded = ShardedIndex.create_from_codebooks(
        tmp_path / "index", unit_codebooks(), card={}, shard_count=2
    )
    sharded.close()
    assert main(["serve", "--index", str(tmp_path / "index"), "--ray", "127.0.0.1:9"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in caplog.text


def test_replicas_of_a_machine_without_gpus_share_its_cpus():
    from service.ray_serve import RayServeConfig, plan_replicas

    assert plan_replicas({"CPU": 2.0}, None) == RayServeConfig(1, 1.0, 0.0, 0.25, 0.25)
    assert plan_replicas({"CPU": 16.0}, None).embedder_cpus == 2.0
    assert plan_replicas({"CPU": 32.0, "GPU": 4.0}, None) == RayServeConfig(4, 1.0, 1.0)


def test_each_embedder_fits_on_one_node_beside_the_small_replicas():
    from service.ray_serve import plan_replicas

    # `docker compose --profile ray up --scale ray-worker=3`: head, workers, service, 2 CPUs each.
    five_small_nodes = plan_replicas({"CPU": 10.0}, None, [2.0] * 5)
    assert five_small_nodes.embedder_replicas == 2
    assert five_small_nodes.embedder_cpus + five_small_nodes.shard_cpus <= 2.0
    assert plan_replicas({"CPU": 10.0}, None, [8.0, 2.0]).embedder_cpus == 2.5
