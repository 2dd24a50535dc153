"""Quality of rankings over a feature archive, with patient-disjoint queries."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.evaluate.features import (
    FeatureArchive,
    cell_and_code_ranking,
    cell_of,
    centre_and_normalise,
    coarse_cells,
    exact_ranking,
    faiss_pq_index,
    index_ranking,
    model_descriptors,
    query_archive_split,
    ranking_quality,
    rerank,
    spq_ranking,
)
from indexer.index.second_stage import FineQuantiser
from indexer.learn.feature_training import patient_split
from model.card import ModelCard
from model.feature_spq import FeatureSPQModel


def test_quality_counts_label_hits_map_vote_and_float_recall_by_hand() -> None:
    archive_labels = np.array(["a"] * 6 + ["b"] * 6)
    query_labels = np.array(["a"])
    ranked = np.array([[0, 6, 1, 7, 8, 2, 3, 4, 5, 9]])
    truth = np.array([[0, 1, 2, 3, 4, 5, 11, 10, 9, 8]])
    quality = ranking_quality(ranked, query_labels, archive_labels, truth)
    assert quality.precision_at_10 == pytest.approx(0.6)
    # hits at ranks 1, 3, 6, 7, 8, 9: AP = mean(1/1, 2/3, 3/6, 4/7, 5/8, 6/9)
    expected_ap = np.mean([1, 2 / 3, 3 / 6, 4 / 7, 5 / 8, 6 / 9])
    assert quality.map_at_10 == pytest.approx(expected_ap)
    assert quality.majority_vote_at_5 == 0.0  # top 5: a, b, a, b, b
    assert quality.float_recall_at_10 == pytest.approx(0.8)


def test_majority_vote_ties_go_to_the_label_ranked_first() -> None:
    archive_labels = np.array(["a", "b", "c"] * 4)
    ranked = np.array([[1, 0, 4, 3, 2, 5, 6, 7, 8, 9]])  # top 5: b, a, b, a, c
    quality = ranking_quality(ranked, np.array(["b"]), archive_labels, ranked)
    assert quality.majority_vote_at_5 == 1.0


def small_archive(rows: int = 400, dim: int = 16) -> FeatureArchive:
    generator = np.random.default_rng(0)
    labels = np.array([f"type{i % 4}" for i in range(rows // 10)]).repeat(10)
    centres = generator.normal(size=(4, dim)).astype(np.float32)
    vectors = centres[np.arange(rows) // 10 % 4] + 0.8 * generator.normal(size=(rows, dim))
    slides = np.array([f"slide{i}" for i in range(rows // 10)]).repeat(10)
    groups = np.array([f"patient{i // 2}" for i in range(rows // 10)]).repeat(10)
    return FeatureArchive(vectors.astype(np.float32), slides, groups, labels)


def test_queries_and_archive_never_share_a_patient_and_validation_never_sees_test() -> None:
    data = small_archive()
    split = patient_split(list(data.groups), 0.2, 0.2, seed=3)
    for part in ("validation", "test"):
        rows = query_archive_split(data, split, part, max_queries=15, seed=0)
        assert len(rows.queries) == 15
        assert not set(data.groups[rows.queries]) & set(data.groups[rows.archive])
    validation = query_archive_split(data, split, "validation", None, 0)
    assert not set(data.groups[validation.archive]) & set(split.test)


def test_a_shortlist_reranked_by_8_bit_vectors_keeps_nearly_every_float_neighbour_it_holds() -> (
    None
):
    data = small_archive(rows=2000, dim=32)
    mean = data.vectors.mean(axis=0)
    unit = centre_and_normalise(data.vectors, mean)
    archive, queries = unit[100:], unit[:100]
    truth = exact_ranking(queries, archive, 10)
    coarse = index_ranking(faiss_pq_index(archive, 16, 4, rotate=False), archive, queries, 100)
    fine = FineQuantiser.train(archive)
    reranked = rerank(queries, coarse, fine.encode(archive), fine)
    labels = data.labels[100:]
    before = ranking_quality(coarse, data.labels[:100], labels, truth).float_recall_at_10
    after = ranking_quality(reranked, data.labels[:100], labels, truth).float_recall_at_10
    held = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(coarse, truth, strict=True)])
    assert after > before + 0.2
    assert after >= held - 0.01


def small_feature_model() -> FeatureSPQModel:
    card = ModelCard(
        backbone="features:test",
        num_codebooks=4,
        codebook_size=16,
        codeword_dim=4,
        input_dim=16,
        feature_model="test",
    )
    return FeatureSPQModel(card).eval()


def test_the_cell_and_code_ranking_without_cell_weight_is_the_index_search() -> None:
    data = small_archive(rows=600, dim=16)
    model = small_feature_model()
    archive, queries = data.vectors[20:], data.vectors[:20]
    centroids = coarse_cells(model_descriptors(model, archive), 8)
    by_cells = cell_and_code_ranking(model, archive, queries, centroids, 0.0, 10)
    by_index = spq_ranking(model, archive, queries, 10)
    shared = [len(np.intersect1d(a, b)) for a, b in zip(by_cells, by_index, strict=True)]
    assert np.mean(shared) >= 9.5


def test_a_heavy_cell_weight_ranks_the_query_cell_first() -> None:
    data = small_archive(rows=600, dim=16)
    model = small_feature_model()
    archive, queries = data.vectors[20:], data.vectors[:20]
    centroids = coarse_cells(model_descriptors(model, archive), 4)
    cells = cell_of(model_descriptors(model, archive), centroids)
    query_cells = cell_of(model_descriptors(model, queries), centroids)
    ranked = cell_and_code_ranking(model, archive, queries, centroids, 100.0, 5)
    assert (cells[ranked] == query_cells[:, None]).all()
