"""Search in a feature archive: by a JSON vector, by the rows of an .npy, by an item's stored code;
every refusal says which rule was broken; items have no pixels and say so."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from fastapi.testclient import TestClient

from indexer.index.opening import open_index
from indexer.index.second_stage import SecondStageSettings
from indexer.index.store import ArchiveIndex
from service.app import create_app
from service.engine import SearchEngine
from service.errors import ServiceError
from service.settings import Settings
from service.vectors import VectorQuery
from tests.service import samples
from tests.service.conftest import API_KEY
from tests.service.feature_index import (
    DIM,
    FEATURE_MODEL,
    FeatureSample,
    build_feature_index,
    require_features,
)
from tests.service.test_api import assert_error, make_client

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> FeatureSample:
    source = require_features()
    return build_feature_index(tmp_path_factory.mktemp("features") / "index", source)


def feature_client(sample: FeatureSample, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "index_dir": sample.index_dir,
        "api_key": API_KEY,
        "max_k": 50,
        "workers": 1,
        "device": "cpu",
        "max_query_vectors": 4,
    }
    options.update(overrides)
    return TestClient(create_app(Settings(**options)))


@pytest.fixture(scope="module")
def client(sample: FeatureSample) -> Iterator[TestClient]:
    with feature_client(sample) as test_client:
        yield test_client


def npy(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def by_vector(client: TestClient, vector: object, **form: Any) -> Any:
    text = vector if isinstance(vector, str) else json.dumps(vector)
    return client.post("/search", data={"vector": text, **form})


def by_vectors(client: TestClient, data: bytes, **form: Any) -> Any:
    return client.post("/search", files={"vectors": ("q.npy", data)}, data=form)


def own_item_ids(sample: FeatureSample, rows: list[int]) -> list[int]:
    """Item ids of the given rows (items were added in row order)."""
    with ArchiveIndex.open(sample.index_dir) as index:
        found = {
            index.get(item_id).extra["row"]: item_id  # type: ignore[union-attr]
            for item_id in range(1, len(sample.vectors) + 1)
            if index.get(item_id) is not None
        }
    return [found[row] for row in rows]


def assert_no_pixels(hit: dict[str, Any]) -> None:
    assert hit["thumbnail_url"] is None
    assert hit["thumbnail_note"] == "feature archive: no pixels to show"
    assert hit["feature"]["slide_id"] and isinstance(hit["feature"]["row"], int)


# --- searching --------------------------------------------------------------------------------


def test_a_json_vector_finds_its_own_row_at_the_top_score(
    client: TestClient, sample: FeatureSample
) -> None:
    row = 37
    body = by_vector(client, sample.vectors[row].tolist(), k=10).json()
    results = body["results"]
    assert len(results) == 10
    # Its own code is the best code for its own descriptor: nothing scores higher (others may
    # share the code and tie).
    own = [hit for hit in results if hit["feature"]["row"] == row]
    assert own and own[0]["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    assert own[0]["feature"]["slide_id"] == sample.slide_ids[row]
    assert own[0]["group"] and own[0]["label"]
    for hit in results:
        assert_no_pixels(hit)
    assert body["query"] is None
    assert body["query_vector"] == {"dim": DIM, "feature_model": FEATURE_MODEL, "item_id": None}
    assert body["slides"] == []


def test_an_npy_of_rows_is_answered_per_row_in_row_order(
    client: TestClient, sample: FeatureSample
) -> None:
    rows = [3, 250, 599]
    body = by_vectors(client, npy(sample.vectors[rows]), k=5).json()
    assert body["rows"] == 3 and body["k"] == 5
    assert [answer["row"] for answer in body["queries"]] == [0, 1, 2]
    for answer, row in zip(body["queries"], rows, strict=True):
        results = answer["results"]
        assert len(results) == 5
        own = [hit for hit in results if hit["feature"]["row"] == row]
        assert own and own[0]["score"] == pytest.approx(results[0]["score"], abs=1e-5)
        for hit in results:
            assert_no_pixels(hit)
    assert body["query_vector"]["dim"] == DIM


def test_an_npy_of_float16_rows_is_searched_as_float32(
    client: TestClient, sample: FeatureSample
) -> None:
    as_stored = sample.vectors[[10]].astype(np.float16)
    body = by_vectors(client, npy(as_stored), k=3).json()
    assert body["queries"][0]["results"][0]["score"] > 0


def test_filters_apply_to_a_search_by_vector(client: TestClient, sample: FeatureSample) -> None:
    own_group = by_vector(client, sample.vectors[0].tolist(), k=1).json()["results"][0]["group"]
    body = by_vector(client, sample.vectors[0].tolist(), k=20, exclude_group=own_group).json()
    assert body["results"] and all(hit["group"] != own_group for hit in body["results"])


def test_an_item_id_searches_with_its_stored_code_and_comes_first(
    client: TestClient, sample: FeatureSample
) -> None:
    (item_id,) = own_item_ids(sample, [123])
    body = client.post("/search", data={"item_id": str(item_id), "k": 8}).json()
    results = body["results"]
    assert results[0]["id"] == item_id and results[0]["exact_copy"] is True
    assert results[0]["feature"]["row"] == 123
    assert body["query_vector"]["item_id"] == item_id
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    assert_error(client.post("/search", data={"item_id": "999999"}), 404, "not_found")


def test_the_stored_code_query_equals_a_query_by_the_codewords_it_selects(
    client: TestClient, sample: FeatureSample
) -> None:
    """The same ranking as an independent computation: the item's codes decoded by hand from the
    codebooks, scored against every stored code by exact ADC (sum of sub-space dot products)."""
    (item_id,) = own_item_ids(sample, [77])
    with ArchiveIndex.open(sample.index_dir) as index:
        ids = np.arange(1, len(index) + 1)
        codes = index.codes_of(ids)
        codebooks = index.codebooks
    m = np.arange(codebooks.shape[0])
    query = codebooks[m, codes[item_id - 1]]  # (M, d): the codewords its code selects
    scores = np.einsum("md,nmd->n", query, codebooks[m, codes])
    body = client.post("/search", data={"item_id": str(item_id), "k": 5}).json()
    got = [hit["score"] for hit in body["results"]]
    assert got == pytest.approx(np.sort(scores)[::-1][:5].tolist(), abs=1e-4)


# --- refusals ---------------------------------------------------------------------------------


def test_a_vector_of_the_wrong_length_is_refused_naming_both_lengths(
    client: TestClient, sample: FeatureSample
) -> None:
    body = assert_error(by_vector(client, sample.vectors[0, :191].tolist()), 422, "vector_length")
    assert "191" in body["detail"] and "192" in body["detail"]
    rows = npy(np.zeros((2, 100), dtype=np.float32))
    assert_error(by_vectors(client, rows), 422, "vector_length")


def test_a_vector_with_nan_is_refused_naming_the_position(client: TestClient) -> None:
    vector = ["NaN" if i == 5 else 0.1 for i in range(DIM)]
    text = json.dumps(vector).replace('"NaN"', "NaN")
    body = assert_error(by_vector(client, text), 422, "vector_not_finite")
    assert "position 5" in body["detail"]
    rows = np.ones((2, DIM), dtype=np.float32)
    rows[1, 7] = np.inf
    body = assert_error(by_vectors(client, npy(rows)), 422, "vector_not_finite")
    assert "1:7" in body["detail"]


def test_a_vector_of_the_wrong_dtype_is_refused_naming_it(client: TestClient) -> None:
    strings = ["a"] + [0.0] * (DIM - 1)
    body = assert_error(by_vector(client, strings), 422, "vector_dtype")
    assert "string" in body["detail"]
    body = assert_error(
        by_vectors(client, npy(np.zeros((1, DIM), dtype=np.complex64))), 422, "vector_dtype"
    )
    assert "complex64" in body["detail"]
    assert_error(by_vectors(client, npy(np.zeros((1, DIM), dtype=bool))), 422, "vector_dtype")


def test_bytes_that_are_not_json_or_npy_are_refused_as_such(client: TestClient) -> None:
    assert_error(by_vector(client, "[0.1, 0.2"), 422, "vector_format")
    assert_error(by_vectors(client, b"not an npy file"), 422, "vector_format")
    assert_error(by_vector(client, {"a": 1}), 422, "vector_shape")


def test_more_rows_than_the_limit_are_refused(client: TestClient, sample: FeatureSample) -> None:
    body = assert_error(by_vectors(client, npy(sample.vectors[:5])), 422, "too_many_vectors")
    assert "5" in body["detail"] and "4" in body["detail"]


def test_an_image_query_to_a_feature_index_says_how_to_query_it(client: TestClient) -> None:
    image = samples.encode(samples.tile_rgb(3), "PNG")
    response = client.post("/search", files={"image": ("q.png", image)})
    body = assert_error(response, 422, "index_kind_mismatch")
    assert "dimension 192" in body["detail"] and FEATURE_MODEL in body["detail"]
    assert "vector" in body["detail"] and "item_id" in body["detail"]
    region = {"slide_id": "ab", "x": "0", "y": "0", "width": "10", "height": "10"}
    assert_error(client.post("/search", data=region), 422, "index_kind_mismatch")


def test_an_image_upload_to_a_feature_index_is_refused(client: TestClient) -> None:
    image = samples.encode(samples.tile_rgb(3), "PNG")
    response = client.post("/index", files={"images": ("a.png", image)}, headers=AUTH)
    body = assert_error(response, 422, "index_kind_mismatch")
    assert "dimension 192" in body["detail"]


def test_a_vector_is_sent_alone(client: TestClient, sample: FeatureSample) -> None:
    vector = json.dumps(sample.vectors[0].tolist())
    body = assert_error(
        client.post("/search", data={"vector": vector, "item_id": "1"}), 422, "invalid_request"
    )
    assert "item_id" in body["detail"]
    both = client.post(
        "/search", data={"vector": vector}, files={"vectors": ("q.npy", npy(sample.vectors[:1]))}
    )
    assert_error(both, 422, "invalid_request")


def test_a_vector_to_an_image_index_is_refused(small_index: Path) -> None:
    with make_client(small_index) as image_client:
        body = assert_error(by_vector(image_client, [0.0] * 64), 422, "index_kind_mismatch")
        assert "holds images" in body["detail"]
        rows = npy(np.zeros((2, 64), dtype=np.float32))
        assert_error(by_vectors(image_client, rows), 422, "index_kind_mismatch")
        assert image_client.get("/ready").json()["index_kind"] == "images"


# --- items, readiness and statistics ----------------------------------------------------------


def test_a_feature_item_reads_without_a_thumbnail_and_says_why(
    client: TestClient, sample: FeatureSample
) -> None:
    (item_id,) = own_item_ids(sample, [5])
    item = client.get(f"/images/{item_id}").json()
    assert_no_pixels(item)
    assert item["feature"] == {"slide_id": sample.slide_ids[5], "row": 5}
    body = assert_error(client.get(f"/images/{item_id}/thumbnail"), 404, "not_found")
    assert "no pixels" in body["detail"]


def test_ready_and_stats_say_the_index_kind_and_dimension(client: TestClient) -> None:
    ready = client.get("/ready").json()
    assert ready["index_kind"] == "features" and ready["feature_dim"] == DIM
    stats = client.get("/stats").json()
    assert stats["index_kind"] == "features"
    assert stats["feature_dim"] == DIM and stats["feature_model"] == FEATURE_MODEL


def test_a_vector_may_be_pretty_printed_json_with_newlines(
    client: TestClient, sample: FeatureSample
) -> None:
    text = json.dumps(sample.vectors[1].tolist(), indent=2) + "\n"
    assert "\n" in text
    body = by_vector(client, text, k=2).json()
    assert len(body["results"]) == 2


def test_the_openapi_description_offers_each_index_only_what_it_takes(
    client: TestClient, small_index: Path
) -> None:
    def kinds(openapi: dict[str, Any]) -> list[list[str]]:
        content = openapi["paths"]["/search"]["post"]["requestBody"]["content"]
        ref = content["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
        one_of = openapi["components"]["schemas"][ref]["oneOf"]
        return [kind.get("required") or kind["allOf"][0]["required"] for kind in one_of]

    # A feature index takes vectors, an item id and the slide or case queries (no pixels needed).
    assert kinds(client.get("/openapi.json").json()) == [
        ["item_id"],
        ["vector"],
        ["vectors"],
        ["query_slide_id"],
        ["query_group"],
        ["slide_vectors"],
    ]
    with make_client(small_index) as image_client:
        image_kinds = kinds(image_client.get("/openapi.json").json())
    assert ["image"] in image_kinds and ["vector"] not in image_kinds


def test_vector_searches_count_against_the_clients_limit_like_any_search(
    sample: FeatureSample,
) -> None:
    """One client with a request in flight (limit 1) is refused a vector search at once (429);
    another client's vector search waits for the worker and is answered once it is free."""
    opened = open_index(sample.index_dir, torch.device("cpu"))
    engine = SearchEngine(
        opened.model,
        opened.index,
        torch.device("cpu"),
        workers=1,
        max_pending=8,
        max_image_pixels=1_000_000,
        max_in_flight_per_client=1,
    )
    release = threading.Event()
    query = VectorQuery(sample.vectors[:2])

    async def scenario() -> tuple[ServiceError, int]:
        holding = asyncio.create_task(engine.offload(lambda: release.wait(30), client="a"))
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceError) as refused:
            await engine.search(query, 3, None, client="a", render=lambda out: len(out.rows))
        other = asyncio.create_task(
            engine.search(query, 3, None, client="b", render=lambda out: len(out.rows))
        )
        await asyncio.sleep(0.05)
        assert not other.done()  # the one worker is held by client a
        release.set()
        await holding
        return refused.value, await other

    try:
        refused, rows = asyncio.run(scenario())
    finally:
        release.set()
        engine.close()
    assert refused.status_code == 429 and refused.code == "too_many_requests"
    assert rows == 2


# --- an index with a second stage -------------------------------------------------------------


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> FeatureSample:
    source = require_features()
    return build_feature_index(
        tmp_path_factory.mktemp("two-stage") / "index",
        source,
        second_stage=SecondStageSettings(shortlist_factor=20),
    )


def test_with_a_second_stage_vectors_are_ranked_by_the_cosine_of_the_centred_rows(
    two_stage: FeatureSample,
) -> None:
    rows = [3, 250]
    mean = two_stage.vectors.mean(axis=0)
    unit = two_stage.vectors - mean
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    with feature_client(two_stage) as test_client:
        answer = by_vectors(test_client, npy(two_stage.vectors[rows]), k=5).json()
        stats = test_client.get("/stats").json()
    for row, part in zip(rows, answer["queries"], strict=True):
        hits = part["results"]
        assert hits[0]["feature"]["row"] == row
        # Scores are the decoded 8-bit codes' inner products with the unit query: cosines
        # within the quantisation's error.
        exact = unit[[hit["feature"]["row"] for hit in hits]] @ unit[row]
        assert np.allclose([hit["score"] for hit in hits], exact, atol=0.02)
    stages = {stage["stage"]: stage for stage in stats["bytes_per_item"]["stages"]}
    assert set(stages) == {"codes", "fine"}
    # 192 bytes of codes and 8 of ids per item on disk, memory-mapped: no RAM after a snapshot.
    assert stages["fine"]["disk_parts"]["fine_codes"] == pytest.approx(192, abs=1)
    assert stages["fine"]["disk_parts"]["fine_ids"] == pytest.approx(8, abs=1)
    assert stages["fine"]["ram"] == 0
    assert stats["bytes_per_item"]["ram"] == pytest.approx(stages["codes"]["ram"])


def test_with_a_second_stage_an_item_id_searches_with_its_decoded_fine_code(
    two_stage: FeatureSample,
) -> None:
    (item_id,) = own_item_ids(two_stage, [40])
    with feature_client(two_stage) as test_client:
        hits = test_client.post("/search", data={"item_id": str(item_id), "k": "5"}).json()
    assert hits["results"][0]["id"] == item_id and hits["results"][0]["exact_copy"] is True
    assert hits["results"][0]["score"] == pytest.approx(1.0, abs=0.02)
    assert all(
        first["score"] >= second["score"]
        for first, second in zip(hits["results"], hits["results"][1:], strict=False)
    )
