"""Slide and case queries over a feature archive (a slice of tcga-hipt-regions-192d: HIPT
region features, no pixels) served by a real `histosearch serve`: a slide is the items sharing
an ``extra.slide_id``, and an uploaded slide is a set of the producing model's feature rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from indexer.index.store import ArchiveIndex
from tests.service.conftest import npy_bytes, post_search
from tests.service.feature_index import DIM, FeatureSample


def group_of(index_dir: Path, slide_id: str) -> str:
    with ArchiveIndex.open(index_dir) as index:
        for item_id in range(1, len(index) + 1):
            record = index.get(item_id)
            if record is not None and record.extra.get("slide_id") == slide_id:
                assert record.group is not None
                return record.group
    raise AssertionError(slide_id)


def largest_slide(sample: FeatureSample) -> str:
    return Counter(sample.slide_ids).most_common(1)[0][0]


def test_a_feature_slide_query_ranks_other_patients_slides_with_feature_evidence(feature_server):
    server, sample = feature_server
    slide = largest_slide(sample)
    response = post_search(server, {"query_slide_id": slide, "k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    patient = group_of(sample.index_dir, slide)
    assert body["query"]["items"] == sample.slide_ids.count(slide)
    assert body["query"]["excluded_group"] == patient
    assert len(body["results"]) == 5
    own_slides = {s for s in set(sample.slide_ids) if group_of(sample.index_dir, s) == patient}
    for result in body["results"]:
        assert result["group"] != patient and result["id"] not in own_slides
        assert result["viewer_url"] is None  # no pixels to show
        assert result["evidence"]
        for item in result["evidence"]:
            assert item["feature"]["slide_id"] == result["id"]
            assert item["thumbnail_url"] is None
    scores = [result["score"] for result in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_an_uploaded_slide_of_feature_rows_finds_its_own_slide_first(feature_server):
    server, sample = feature_server
    slide = largest_slide(sample)
    rows = sample.vectors[[name == slide for name in sample.slide_ids]]
    files = {"slide_vectors": ("slide.npy", npy_bytes(rows), "application/octet-stream")}
    response = post_search(server, {"k": "3", "aggregation": "median-min"}, files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["kind"] == "vectors" and body["query"]["excluded_group"] is None
    assert body["results"][0]["id"] == slide


def test_a_case_query_over_features_answers_cases(feature_server):
    server, sample = feature_server
    patient = group_of(sample.index_dir, largest_slide(sample))
    response = post_search(server, {"query_group": patient, "group_by": "group", "k": "4"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results and all(r["kind"] == "group" and r["id"] != patient for r in results)


def test_an_uploaded_slide_of_descriptors_instead_of_features_is_a_422_naming_both(feature_server):
    server, _ = feature_server
    files = {"slide_vectors": ("wrong.npy", npy_bytes(np.ones((5, 64), np.float32)), "x/y")}
    response = post_search(server, {}, files)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "64" in detail and str(DIM) in detail
