"""SPQ on a backbone's features: a short run on real TCGA region features beats FAISS PQ."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest

from indexer.evaluate.features import (
    centre_and_normalise,
    exact_ranking,
    faiss_pq_index,
    index_ranking,
    load_region_archive,
    query_archive_split,
    ranking_quality,
    spq_ranking,
)
from indexer.learn.feature_training import (
    FeatureTrainConfig,
    patient_split,
    train_on_features,
)
from indexer.learn.splits import SplitError

TCGA = Path(__file__).resolve().parents[4] / "shared" / "data" / "tcga-hipt-regions-192d"


def test_the_patient_split_is_fixed_by_its_seed_and_keeps_patients_whole() -> None:
    groups = [f"p{i}" for i in range(50) for _ in range(3)]
    split = patient_split(groups, 0.2, 0.2, seed=7)
    assert split == patient_split(groups, 0.2, 0.2, seed=7)
    assert split != patient_split(groups, 0.2, 0.2, seed=8)
    assert (len(split.train), len(split.validation), len(split.test)) == (30, 10, 10)


def test_a_split_with_too_few_patients_is_refused() -> None:
    with pytest.raises(SplitError, match="too few"):
        patient_split(["a", "b"], 0.3, 0.3, seed=0)


@pytest.mark.slow
def test_a_short_run_on_tcga_features_beats_faiss_pq_at_32_bits_on_held_out_patients() -> None:
    if not TCGA.is_dir():
        pytest.skip(f"{TCGA} is missing")
    faiss.omp_set_num_threads(1)
    data = load_region_archive(TCGA, limit=24_000)
    split = patient_split(list(data.groups), 0.2, 0.2, seed=0)
    rows = query_archive_split(data, split, "test", max_queries=600, seed=0)
    train = data.subset(data.rows_of(split.train))
    config = FeatureTrainConfig(bits=32, epochs=1, threads=1)
    model = train_on_features(train.vectors, list(train.slides), config).model

    archive, queries = data.vectors[rows.archive], data.vectors[rows.queries]
    mean = train.vectors.mean(axis=0)
    unit_archive, unit_queries = (
        centre_and_normalise(archive, mean),
        centre_and_normalise(queries, mean),
    )
    truth = exact_ranking(unit_queries, unit_archive, 10)
    labels, archive_labels = data.labels[rows.queries], data.labels[rows.archive]
    faiss_pq = faiss_pq_index(centre_and_normalise(train.vectors, mean), 32, 8, rotate=False)
    baseline = ranking_quality(
        index_ranking(faiss_pq, unit_archive, unit_queries, 10), labels, archive_labels, truth
    )
    ours = ranking_quality(spq_ranking(model, archive, queries, 10), labels, archive_labels, truth)
    assert ours.precision_at_10 > baseline.precision_at_10 + 0.01
    assert ours.float_recall_at_10 > baseline.float_recall_at_10
