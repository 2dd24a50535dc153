"""Leave-one-patient-out slide and case evaluation, its metrics and its code sources."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.evaluate.slide_level import (
    EvaluationSettings,
    ExcludingSearch,
    FloatCodec,
    SlideFeatures,
    SPQCodec,
    Variant,
    average_precision,
    centre_and_normalise,
    choose_variants,
    evaluate_part,
    faiss_pq_source,
    float_source,
    knob_grid,
    label_metrics,
    load_labelled_slides,
    macro_f1,
    majority_vote,
    patient_split,
    prepare_archive,
    spq_source,
    train_codes,
    training_item_slides,
)
from indexer.index.pq import decode
from indexer.index.slide_search import Aggregation, SlideSearchSettings
from indexer.learn.feature_config import FeatureTrainConfig

CLASSES, PATIENTS, DIMENSION = 3, 60, 16


def seeded_features(noise: float = 0.3, seed: int = 0) -> SlideFeatures:
    """60 patients of 3 classes, 1-2 slides each, 8 items per slide near the class centre."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((CLASSES, DIMENSION))
    vectors: list[np.ndarray] = []
    means: list[np.ndarray] = []
    item_slide: list[int] = []
    slide_ids: list[str] = []
    groups: list[str] = []
    labels: list[str] = []
    for patient in range(PATIENTS):
        label = patient % CLASSES
        for slide in range(1 + patient % 2):
            own = centres[label] + noise * rng.standard_normal((8, DIMENSION))
            item_slide += [len(slide_ids)] * 8
            slide_ids.append(f"p{patient:02d}-s{slide}")
            groups.append(f"p{patient:02d}")
            labels.append(f"class-{label}")
            vectors.append(own)
            means.append(own.mean(axis=0))
    return SlideFeatures(
        vectors=np.concatenate(vectors).astype(np.float32),
        item_slide=np.array(item_slide, dtype=np.int64),
        slide_ids=tuple(slide_ids),
        slide_groups=tuple(groups),
        slide_labels=tuple(labels),
        slide_means=np.stack(means).astype(np.float32),
    )


def test_majority_vote_breaks_ties_towards_the_label_ranked_first():
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"
    assert majority_vote(["c", "a", "a"]) == "a"
    assert majority_vote([]) is None


def test_label_metrics_match_a_hand_computation():
    ranked = [["a", "b", "b", "a", "a"], ["b", "b", "a", "c", "c"], ["c", "a", "c", "b", "b"]]
    truth = ["a", "a", "b"]
    metrics = label_metrics(ranked, truth)
    assert metrics.top1 == pytest.approx(1 / 3)
    # MV@3: b, b, c -> only none right; MV@5: a, b (tie b/c/... b first), c
    assert metrics.mv3 == pytest.approx(0.0)
    assert metrics.mv5 == pytest.approx(1 / 3)
    # AP@5 of the first: hits at 1, 4, 5 -> (1 + 2/4 + 3/5) / 3
    assert average_precision(ranked[0], "a") == pytest.approx((1 + 0.5 + 0.6) / 3)
    assert metrics.map5 == pytest.approx(((1 + 0.5 + 0.6) / 3 + 1 / 3 + (1 / 4 + 2 / 5) / 2) / 3)
    # Macro-F1 over a, b, c of predictions [a, b, c] against [a, a, b]: F1 a = 2/3, b = 0, c = 0.
    assert metrics.macro_f1_mv5 == pytest.approx((2 / 3) / 3)
    assert macro_f1(["a", "b"], ["a", "b"]) == pytest.approx(1.0)


def test_patient_split_is_disjoint_seeded_and_complete():
    groups = [f"p{i}" for i in range(100)] * 2
    split = patient_split(groups, 0.15, 0.2, seed=4)
    assert not (split.train & split.validation or split.train & split.test)
    assert not split.validation & split.test
    assert len(split.train | split.validation | split.test) == 100
    assert (len(split.validation), len(split.test)) == (15, 20)
    assert split == patient_split(groups, 0.15, 0.2, seed=4)
    assert split != patient_split(groups, 0.15, 0.2, seed=5)


def test_excluding_search_leaves_the_group_out_and_still_returns_k():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = [f"g{i % 4}" for i in range(40)]
    search = ExcludingSearch(FloatCodec().hold(vectors), groups)
    scores, rows = search(vectors[:3], 12, "g1")
    assert rows.shape == (3, 12) and (rows >= 0).all()
    assert all(groups[row] != "g1" for row in rows.ravel())
    reference = vectors[:3] @ vectors.T
    reference[:, [i for i, g in enumerate(groups) if g == "g1"]] = -np.inf
    np.testing.assert_allclose(scores, -np.sort(-reference, axis=1)[:, :12], atol=1e-6)
    padded_scores, padded = search(vectors[:1], 40, "g1")
    assert (padded[0, 30:] == -1).all() and np.isneginf(padded_scores[0, 30:]).all()


@pytest.mark.parametrize("level", ["slide", "group"])
def test_separable_classes_score_perfectly_with_every_aggregation(level):
    features = seeded_features()
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=0)
    archive = prepare_archive(
        features, train_codes(features, split, float_source), SlideSearchSettings()
    )
    results = evaluate_part(archive, split.test, EvaluationSettings(level=level))
    assert {variant.aggregation for variant in results} == set(Aggregation)
    test_slides = sum(group in split.test for group in features.slide_groups)
    for metrics in results.values():
        assert metrics.queries == (test_slides if level == "slide" else len(split.test))
        assert metrics.top1 == metrics.mv5 == metrics.map5 == metrics.macro_f1_mv5 == 1.0


def test_noise_lowers_the_figures_and_codes_stay_close_to_floats():
    features = seeded_features(noise=12.0, seed=1)
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=0)
    settings = EvaluationSettings(
        variants=(Variant(Aggregation.MEAN_MAX, SlideSearchSettings(item_k=20, evidence=0)),)
    )
    floats = prepare_archive(
        features, train_codes(features, split, float_source), SlideSearchSettings()
    )
    exact = next(iter(evaluate_part(floats, split.test, settings).values()))
    trained = train_codes(features, split, faiss_pq_source(64), means_own=False)
    coded = next(
        iter(
            evaluate_part(
                prepare_archive(features, trained, SlideSearchSettings()), split.test, settings
            ).values()
        )
    )
    assert trained.items.bits == 64 and trained.items.name == "PQ8x8"
    assert trained.means is trained.items
    assert exact.top1 < 1.0
    assert coded.mv5 >= exact.mv5 - 0.15


def test_the_own_patient_is_never_a_neighbour_of_its_query():
    features = seeded_features()
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=2)
    archive = prepare_archive(
        features, train_codes(features, split, float_source), SlideSearchSettings()
    )
    catalog = archive.searcher.catalog
    for group in sorted(split.test)[:5]:
        slides = catalog.slides_of_group(group)
        rows = catalog.items_of_slides(slides)
        _, found = archive.searcher.item_search(archive.unit_items[rows], 30, group)
        assert all(
            catalog.groups[catalog.slide_group[catalog.item_slide[r]]] != group
            for r in found.ravel()
        )


def test_knobs_are_chosen_per_aggregation_by_validation_mv5():
    variants = knob_grid([10, 50], [0, 32], list(Aggregation))
    names = sorted(variant.name for variant in variants)
    assert names.count("mean") == 1
    assert "vote k=10" in names and "mean-max k=50 rescore=32" in names
    features = seeded_features(noise=3.0, seed=3)
    split = patient_split(features.slide_groups, 0.3, 0.3, seed=0)
    archive = prepare_archive(
        features, train_codes(features, split, float_source), SlideSearchSettings()
    )
    results = evaluate_part(archive, split.validation, EvaluationSettings(variants=variants))
    chosen = choose_variants(results)
    assert set(chosen) == set(Aggregation)
    for aggregation, variant in chosen.items():
        rivals = [results[v].mv5 for v in results if v.aggregation is aggregation]
        assert results[variant].mv5 == max(rivals)


def test_labelled_slides_load_from_feature_files_and_keep_a_subtype_task(tmp_path: Path):
    rng = np.random.default_rng(0)
    slides = [("s1", "p1", "LUNG", "LUAD"), ("s2", "p2", "LUNG", "LUSC"), ("s3", "p3", "BRCA", "")]
    regions = ["s1", "s1", "s2", "s3", "s3", "s3"]
    np.save(tmp_path / "regions.npy", rng.standard_normal((6, 4)).astype(np.float16))
    np.save(tmp_path / "slides.npy", rng.standard_normal((3, 4)).astype(np.float16))
    with (tmp_path / "slides.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "patient_id", "cancer_type", "subtype", "regions_in_slide"])
        writer.writerows([(*row, 1) for row in slides])
    with (tmp_path / "regions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "patient_id", "cancer_type", "subtype"])
        writer.writerows([next(row for row in slides if row[0] == r) for r in regions])
    labelled = load_labelled_slides(tmp_path)
    assert labelled.features.slide_labels == ("LUNG", "LUNG", "BRCA")
    assert labelled.features.item_slide.tolist() == [0, 0, 1, 2, 2, 2]
    lung = labelled.subtype_task("LUNG", ("LUAD", "LUSC"))
    assert lung.slide_ids == ("s1", "s2") and lung.slide_labels == ("LUAD", "LUSC")
    assert lung.item_slide.tolist() == [0, 0, 1]
    assert len(lung.vectors) == 3 and lung.slide_means.shape == (2, 4)


def small_spq_config(**changes: object) -> FeatureTrainConfig:
    """16-d features, 32-bit codes of 16-word codebooks; a few quick steps."""
    settings: dict[str, object] = {
        "bits": 32,
        "codebook_size": 16,
        "signal": "slide",
        "epochs": 1,
        "batch_size": 64,
        "kmeans_iterations": 5,
        "opq_init": False,
        "threads": 1,
        "feature_model": "synthetic",
    }
    return FeatureTrainConfig.model_validate(settings | changes)


def test_training_item_slides_name_the_items_train_codes_hands_to_a_source():
    features = seeded_features()
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=0)
    handed: list[int] = []

    def counting_source(training: np.ndarray) -> FloatCodec:
        handed.append(len(training))
        return FloatCodec()

    train_codes(features, split, counting_source, means_own=False)
    slides = training_item_slides(features, split)
    assert handed == [len(slides)]
    assert {name.split("-")[0] for name in slides} == set(split.train)
    assert slides == sorted(slides)  # each slide's items together, as the slide signal pairs them


@pytest.mark.parametrize("query_codes", [False, True])
def test_spq_codes_rank_by_the_models_adc_and_coded_queries_by_their_own_codes(query_codes):
    features = seeded_features(noise=3.0)
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=0)
    source = spq_source(small_spq_config(), training_item_slides(features, split))
    trained = train_codes(features, split, source, means_own=False)
    assert isinstance(trained.items, SPQCodec)
    model = trained.items.model
    codec = SPQCodec(model, query_codes=query_codes)
    assert codec.bits == 32 and codec.name.startswith("SPQ8x4")
    unit = centre_and_normalise(features.vectors, trained.centre)
    held = codec.hold(unit)
    queries = unit[:5]
    codebooks = model.codebooks().detach().numpy()
    with torch.no_grad():
        codes = model.assign_codes(torch.from_numpy(unit)).numpy()
        query_side = (
            decode(model.assign_codes(torch.from_numpy(queries)).numpy(), codebooks)
            if query_codes
            else model.encode(torch.from_numpy(queries)).numpy()
        )
    reference = query_side @ decode(codes, codebooks).T
    scores, rows = held.search(queries, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, rows, axis=1), atol=1e-4)
    np.testing.assert_allclose(scores[:, 0], reference.max(axis=1), atol=1e-4)
    np.testing.assert_allclose(held.scores(queries, rows[0]), reference[:, rows[0]], atol=1e-4)


def test_spq_codes_serve_the_slide_evaluation_close_to_floats():
    features = seeded_features(noise=3.0, seed=3)
    split = patient_split(features.slide_groups, 0.2, 0.3, seed=0)
    source = spq_source(small_spq_config(), training_item_slides(features, split))
    trained = train_codes(features, split, source, means_own=False)
    settings = EvaluationSettings()
    floats = prepare_archive(
        features, train_codes(features, split, float_source), SlideSearchSettings()
    )
    coded = prepare_archive(features, trained, SlideSearchSettings())
    exact = evaluate_part(floats, split.test, settings)
    found = evaluate_part(coded, split.test, settings)
    assert {variant.aggregation for variant in found} == set(Aggregation)
    for variant, metrics in found.items():
        assert metrics.queries == exact[variant].queries
        assert metrics.mv5 >= exact[variant].mv5 - 0.2


def test_an_spq_source_refuses_slide_names_that_do_not_fit_its_training_rows():
    source = spq_source(small_spq_config(), ["s0"] * 3)
    with pytest.raises(ValueError, match="4 training vectors but 3 slide names"):
        source(np.ones((4, DIMENSION), dtype=np.float32))
