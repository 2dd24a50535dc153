"""POST /search with a whole slide, a case or an uploaded vector set as the query, on a live
server over an index of two OpenSlide slides (`build_slide_index`: slide-a under TUMOR and
slide-b under STROMA, each its own group)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from indexer.index.store import ArchiveIndex
from model import Embedder, load_checkpoint
from tests.service.conftest import API_KEY, LiveServer, npy_bytes, post_search
from tests.service.slide_index import archive_roots, build_slide_index, slide_tile, tissue_cells


@pytest.fixture(scope="module")
def slide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("slide-search")
    index_dir, slides = build_slide_index(root, codewords_from_slide_a=True)
    with ArchiveIndex.open(index_dir) as index:
        records = [index.get(item_id) for item_id in range(1, len(index) + 1)]
    known = [record for record in records if record is not None]
    ids = {name: next(r.extra["slide_id"] for r in known if name in r.source) for name in slides}
    items = {name: [r.id for r in known if name in r.source] for name in slides}
    groups = {name: next(r.group for r in known if name in r.source) for name in slides}
    server = LiveServer(index_dir, root / "server.log", env=archive_roots(index_dir)).start()
    try:
        yield {"server": server, "root": root, "paths": slides, "ids": ids, "items": items,
               "groups": groups}  # fmt: skip
    finally:
        server.stop()


def test_a_slide_query_ranks_the_other_slide_and_leaves_its_own_patient_out(slide_server):
    server, ids = slide_server["server"], slide_server["ids"]
    response = post_search(server, {"query_slide_id": ids["slide-a"], "k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["aggregation"] == "mean-max" and body["group_by"] == "slide"
    assert body["query"] == {
        "kind": "slide",
        "id": ids["slide-a"],
        "items": len(slide_server["items"]["slide-a"]),
        "mosaic_items": body["query"]["mosaic_items"],
        "excluded_group": slide_server["groups"]["slide-a"],
    }
    assert 1 <= body["query"]["mosaic_items"] <= 24
    (only,) = body["results"]
    assert only["id"] == ids["slide-b"] and only["kind"] == "slide" and only["rank"] == 1
    assert only["label"] == "STROMA"
    assert only["evidence"], "a ranked slide comes with its best items"
    for item in only["evidence"]:
        assert item["id"] in slide_server["items"]["slide-b"]
        assert item["extra"]["slide_id"] == ids["slide-b"] and item["tile"] is not None
    evidence_ids = ",".join(str(item["id"]) for item in only["evidence"])
    assert only["viewer_url"] == f"/static/slide.html?id={ids['slide-b']}&items={evidence_ids}"


@pytest.mark.parametrize("aggregation", ["mean", "median-min", "mean-max", "vote"])
def test_with_its_own_patient_kept_a_slide_finds_itself_first(slide_server, aggregation):
    ids = slide_server["ids"]
    fields = {"query_slide_id": ids["slide-a"], "include_own_group": "true"}
    response = post_search(slide_server["server"], {**fields, "aggregation": aggregation})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["excluded_group"] is None
    assert body["results"][0]["id"] == ids["slide-a"]
    first = body["results"][0]
    assert {item["id"] for item in first["evidence"]} <= set(slide_server["items"]["slide-a"])


def test_a_case_query_answers_cases_with_their_best_items(slide_server):
    groups, ids = slide_server["groups"], slide_server["ids"]
    fields = {"query_group": groups["slide-b"], "group_by": "group"}
    response = post_search(slide_server["server"], fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["kind"] == "group" and body["query"]["excluded_group"] == groups["slide-b"]
    (case,) = body["results"]
    assert case["kind"] == "group" and case["id"] == groups["slide-a"]
    assert case["viewer_url"] is None
    assert all(item["extra"]["slide_id"] == ids["slide-a"] for item in case["evidence"])


def test_an_uploaded_set_of_descriptors_finds_the_slide_it_came_from(slide_server):
    root, path = slide_server["root"], slide_server["paths"]["slide-a"]
    model = load_checkpoint(root / "model.pt")
    tiles = [slide_tile(path, cell) for cell in tissue_cells(0)]
    descriptors = Embedder(model, torch.device("cpu")).embed(tiles)
    files = {"slide_vectors": ("slide-a.npy", npy_bytes(descriptors), "application/octet-stream")}
    response = post_search(slide_server["server"], {"k": "2"}, files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["kind"] == "vectors" and body["query"]["items"] == len(tiles)
    assert body["results"][0]["id"] == slide_server["ids"]["slide-a"]


def test_unknown_slides_and_groups_are_404s_naming_them(slide_server):
    server = slide_server["server"]
    response = post_search(server, {"query_slide_id": "0123abcd"})
    assert response.status_code == 404 and "0123abcd" in response.json()["detail"]
    response = post_search(server, {"query_group": "patient-nobody"})
    assert response.status_code == 404 and "patient-nobody" in response.json()["detail"]


def test_a_vector_set_of_the_wrong_dimension_is_a_422_naming_both(slide_server):
    root = slide_server["root"]
    dim = load_checkpoint(root / "model.pt").card.descriptor_dim
    files = {"slide_vectors": ("bad.npy", npy_bytes(np.ones((3, dim + 1), np.float32)), "x/y")}
    response = post_search(slide_server["server"], {}, files)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert str(dim + 1) in detail and str(dim) in detail


def test_slide_query_fields_do_not_mix_with_other_queries_or_filters(slide_server):
    ids, server = slide_server["ids"], slide_server["server"]
    response = post_search(server, {"query_slide_id": ids["slide-a"], "label": "TUMOR"})
    assert response.status_code == 422 and "label" in response.json()["detail"]
    response = post_search(server, {"query_slide_id": ids["slide-a"], "query_group": "x"})
    assert response.status_code == 422 and "query_group" in response.json()["detail"]
    response = post_search(server, {"item_id": "1", "aggregation": "vote"})
    assert response.status_code == 422 and "aggregation" in response.json()["detail"]


def test_a_slide_whose_items_were_all_removed_is_a_422(slide_server):
    # Last: it removes slide-b's items from the module's server.
    server, ids = slide_server["server"], slide_server["ids"]
    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for item_id in slide_server["items"]["slide-b"]:
            assert client.delete(f"/images/{item_id}").status_code == 200
    response = post_search(server, {"query_slide_id": ids["slide-b"]})
    assert response.status_code == 422
    assert response.json()["code"] == "empty_slide" and ids["slide-b"] in response.json()["detail"]


def test_the_openapi_description_names_the_slide_answer(slide_server) -> None:
    with slide_server["server"].client() as client:
        schema = client.get("/openapi.json").json()
    answer = schema["paths"]["/search"]["post"]["responses"]["200"]["content"]["application/json"]
    refs = {option.get("$ref", "").rsplit("/", 1)[-1] for option in answer["schema"]["anyOf"]}
    assert refs == {"SearchResponse", "VectorSearchResponse", "SlideSearchResponse"}
    assert "evidence" in schema["components"]["schemas"]["RankedSlide"]["properties"]
