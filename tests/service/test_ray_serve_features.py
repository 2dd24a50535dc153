"""A feature index on Ray Serve: no image embedder, vector and item searches answered by the
shard deployments exactly as the plain app answers them over one unsharded index.

The index is `build_feature_index`'s slice of tcga-hipt-regions-192d (HIPT region features, no
pixels), copied into a sharded index with the same rows in the same order (so the same ids).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from indexer.index.shards import ShardedIndex
from indexer.index.store import ArchiveIndex
from indexer.ingest.features import FeatureArchive, FeatureBatch, FeatureOptions
from model.feature_encoder import FeatureEncoder
from model.feature_spq import load_feature_checkpoint
from service.app import create_app
from service.settings import Settings
from tests.service import samples
from tests.service.conftest import API_KEY, free_port
from tests.service.feature_index import DIM, FeatureSample, build_feature_index, require_features

pytestmark = pytest.mark.ray
SHARDS = 3


@dataclass
class Served:
    ray_url: str
    plain: TestClient
    sample: FeatureSample


def sharded_copy(sample: FeatureSample, target: Path) -> None:
    """The rows of the sample's archive, encoded by its model, into a sharded index, in the
    order (so with the ids) of the unsharded one."""
    checkpoint = sample.index_dir / "model.pt"
    encoder = FeatureEncoder(load_feature_checkpoint(checkpoint, "cpu"), torch.device("cpu"))
    archive = FeatureArchive.open(sample.index_dir.parent / "archive" / "regions.npy",
                                  FeatureOptions(dim=DIM))  # fmt: skip
    with ShardedIndex.create(target, checkpoint, SHARDS) as sharded:
        for batch in archive.batches():
            assert isinstance(batch, FeatureBatch), batch
            sharded.add_rows(encoder.descriptors(batch.vectors), [batch.rows])
    with ArchiveIndex.open(sample.index_dir) as single, ShardedIndex.open(target) as copy:
        assert len(copy) == len(single) == len(sample.vectors)


@pytest.fixture(scope="module")
def served(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    from service.ray_serve import RayServeConfig, build_application

    source = require_features()
    root = tmp_path_factory.mktemp("ray-serve-features")
    sample = build_feature_index(root / "single", source)
    sharded_copy(sample, root / "sharded")
    options: dict[str, Any] = {"api_key": SecretStr(API_KEY), "device": "cpu", "workers": 2}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = RayServeConfig(embedder_cpus=0.5, shard_cpus=0.25, ingress_cpus=0.25)
    ray_settings = Settings(index_dir=root / "sharded", **options)
    serve.run(build_application(ray_settings, config), name="histosearch", route_prefix="/")
    try:
        with TestClient(create_app(Settings(index_dir=sample.index_dir, **options))) as plain:
            yield Served(f"http://127.0.0.1:{port}", plain, sample)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]


def ranked(response: Any) -> list[tuple[int, float]]:
    """(id, score) of an answer's hits (an httpx response, or the plain app's test client's)."""
    assert response.status_code == 200, response.text
    return [(hit["id"], round(hit["score"], 4)) for hit in response.json()["results"]]


def ranked_rows(response: Any) -> list[list[tuple[int, float]]]:
    """`ranked` of each row of an answer to an ``.npy`` of rows."""
    assert response.status_code == 200, response.text
    return [
        [(hit["id"], round(hit["score"], 4)) for hit in query["results"]]
        for query in response.json()["queries"]
    ]


def test_no_image_embedder_is_deployed_for_a_feature_index(served: Served) -> None:
    from ray import serve

    deployments = serve.status().applications["histosearch"].deployments
    assert "embedder" not in deployments
    assert sorted(deployments) == ["histosearch", *(f"shard-{n:03d}" for n in range(SHARDS))]


def test_a_vector_search_on_ray_shards_ranks_as_the_plain_app_on_one_index(
    served: Served,
) -> None:
    for row in (0, 101, 457):
        form = {"vector": json.dumps(served.sample.vectors[row].tolist()), "k": "10"}
        for extra in ({}, {"exclude_group": "TCGA-02-0004"}):
            on_ray = httpx.post(f"{served.ray_url}/search", data=form | extra, timeout=60)
            plain = served.plain.post("/search", data=form | extra)
            assert ranked(on_ray) == ranked(plain) and len(ranked(on_ray)) == 10
            assert on_ray.json()["query_vector"] == plain.json()["query_vector"]


def test_an_npy_of_rows_on_ray_is_answered_row_by_row_as_by_the_plain_app(
    served: Served,
) -> None:
    buffer = io.BytesIO()
    np.save(buffer, served.sample.vectors[[3, 250, 599]].astype(np.float16))
    files = {"vectors": ("q.npy", buffer.getvalue())}
    on_ray = httpx.post(f"{served.ray_url}/search", files=files, data={"k": "5"}, timeout=60)
    plain = served.plain.post("/search", files=files, data={"k": "5"})
    rows = ranked_rows(on_ray)
    assert rows == ranked_rows(plain) and [len(row) for row in rows] == [5, 5, 5]


def test_an_item_search_on_ray_ranks_as_the_plain_app_with_the_item_first(
    served: Served,
) -> None:
    for item_id in (1, 300):
        form = {"item_id": str(item_id), "k": "8"}
        on_ray = httpx.post(f"{served.ray_url}/search", data=form, timeout=60)
        assert ranked(on_ray) == ranked(served.plain.post("/search", data=form))
        assert ranked(on_ray)[0][0] == item_id


def test_an_image_sent_to_a_feature_index_on_ray_is_refused_naming_what_it_holds(
    served: Served,
) -> None:
    data = samples.encode(samples.tile_rgb(0), "PNG")
    response = httpx.post(
        f"{served.ray_url}/search", files={"image": ("q.png", data)}, data={"k": "5"}, timeout=60
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "index_kind_mismatch"
    assert "feature vectors of dimension 192" in response.json()["detail"]


def test_ready_on_ray_says_the_index_holds_features_and_counts_every_shard(
    served: Served,
) -> None:
    ready = httpx.get(f"{served.ray_url}/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    plain = served.plain.get("/ready").json()
    assert ready.json()["items"] == plain["items"] == len(served.sample.vectors)
    assert ready.json()["index_kind"] == plain["index_kind"] == "features"


def test_a_sharded_index_with_a_second_stage_is_refused_by_ray_serve_before_it_deploys(
    tmp_path: Path,
) -> None:
    from indexer.index.second_stage import SecondStageSettings
    from indexer.index.shards import ShardedIndexError
    from service.ray_serve import build_application

    sample = build_feature_index(tmp_path / "single", require_features())
    target = tmp_path / "staged"
    ShardedIndex.create(target, sample.index_dir / "model.pt", 2, SecondStageSettings()).close()
    settings = Settings(index_dir=target, api_key=SecretStr(API_KEY), device="cpu")
    with pytest.raises(ShardedIndexError, match=r"second stage.*without --ray"):
        build_application(settings)
