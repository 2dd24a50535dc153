"""A feature archive served by a real `histosearch serve` (uvicorn, a child process): searched
over HTTP by a JSON vector, by an .npy of rows and by an item's stored code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from support.live_server import LiveServer
from tests.service.feature_index import (
    DIM,
    FEATURE_MODEL,
    FeatureSample,
)


def test_a_served_feature_archive_is_searched_by_a_json_vector(
    feature_server: tuple[LiveServer, FeatureSample],
) -> None:
    server, sample = feature_server
    with server.client() as client:
        assert client.get("/ready").json()["index_kind"] == "features"
        vector = json.dumps(sample.vectors[42].tolist())
        response = client.post("/search", data={"vector": vector, "k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    own = [hit for hit in results if hit["feature"]["row"] == 42]
    assert own and own[0]["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    assert all(hit["thumbnail_url"] is None for hit in results)
    assert body["query_vector"]["feature_model"] == FEATURE_MODEL


def test_a_served_feature_archive_answers_each_row_of_an_npy(
    feature_server: tuple[LiveServer, FeatureSample],
) -> None:
    server, sample = feature_server
    rows = [0, 300, 555]
    buffer = io.BytesIO()
    np.save(buffer, sample.vectors[rows])
    with server.client() as client:
        response = client.post(
            "/search", files={"vectors": ("q.npy", buffer.getvalue())}, data={"k": "3"}
        )
        wrong = client.post("/search", data={"vector": json.dumps([0.5] * (DIM + 1))})
    assert response.status_code == 200, response.text
    queries = response.json()["queries"]
    assert [answer["row"] for answer in queries] == [0, 1, 2]
    for answer, row in zip(queries, rows, strict=True):
        assert any(hit["feature"]["row"] == row for hit in answer["results"])
        assert answer["results"][0]["feature"]["slide_id"]
    assert wrong.status_code == 422 and wrong.json()["code"] == "vector_length"


def test_a_served_feature_archive_reports_its_bytes_per_item(
    feature_server: tuple[LiveServer, FeatureSample],
) -> None:
    server, sample = feature_server
    with server.client() as client:
        stats = client.get("/stats").json()
    assert stats["items"] == len(sample.vectors)
    assert stats["feature_dim"] == DIM
    per_item = stats["bytes_per_item"]
    assert per_item["ram"] > 0 and per_item["disk"] > per_item["ram"]
    parts = per_item["stages"][0]["disk_parts"]
    codes_file = next(Path(sample.index_dir).glob("codes.*.faiss")).stat().st_size
    assert parts["codes"] == pytest.approx(codes_file / len(sample.vectors), abs=0.01)
