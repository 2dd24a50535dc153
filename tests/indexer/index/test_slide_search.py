"""Slide and case search against brute-force references on small seeded sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from indexer.index.errors import IndexInputError
from indexer.index.pq import adc_scores, assign_codes, lookup_tables
from indexer.index.slide_search import (
    Aggregation,
    EmptySlideError,
    SlideCatalog,
    SlideQuery,
    SlideSearcher,
    SlideSearchSettings,
    UnknownGroupError,
    UnknownSlideError,
    VectorArchive,
    case_query,
    index_item_scorer,
    index_item_search,
    select_mosaic,
    slide_query,
    vector_set_query,
)
from tests.indexer.index_helpers import DIM, items, new_index, unit_codebooks

SLIDES, PER_PATIENT, DIMENSION = 12, 2, 16


def seeded_archive(seed: int = 0) -> tuple[np.ndarray, list[str], dict[str, str], np.ndarray]:
    """Items of 12 slides (5-9 each) of 6 patients, slides of one class near one centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, DIMENSION))
    vectors, slides = [], []
    for slide in range(SLIDES):
        count = int(rng.integers(5, 10))
        vectors.append(centres[slide % 3] + 0.8 * rng.standard_normal((count, DIMENSION)))
        slides += [f"slide-{slide:02d}"] * count
    groups = {f"slide-{s:02d}": f"patient-{s // PER_PATIENT}" for s in range(SLIDES)}
    ids = np.arange(100, 100 + len(slides)) * 3  # sparse, as an index's ids may be
    return np.concatenate(vectors).astype(np.float32), slides, groups, ids


def unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def brute_force(
    query: np.ndarray,
    vectors: np.ndarray,
    owners: list[str],
    owner_group: dict[str, str],
    exclude: str | None,
    aggregation: Aggregation,
) -> list[tuple[str, float]]:
    """Every query item against every item of every target, by loops: the reference."""
    similarity = unit(query) @ unit(vectors).T
    scored = []
    for owner in sorted(set(owners)):
        if owner_group[owner] == exclude:
            continue
        columns = [i for i, o in enumerate(owners) if o == owner]
        best = similarity[:, columns].max(axis=1)
        value = np.median(best) if aggregation is Aggregation.MEDIAN_MIN else best.mean()
        scored.append((owner, float(value)))
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def searcher_over(vectors, slides, groups, ids, **settings) -> SlideSearcher:
    catalog = SlideCatalog.from_items(ids, slides, groups)
    archive = VectorArchive.build(vectors, ids, [groups[s] for s in slides])
    means = np.stack(
        [vectors[[s == name for s in slides]].mean(axis=0) for name in catalog.slide_ids]
    )
    mean_archive = VectorArchive.build(
        means, np.arange(len(means)), [groups[name] for name in catalog.slide_ids]
    )
    return SlideSearcher(
        catalog,
        archive.search,
        archive.scores,
        mean_archive.search,
        SlideSearchSettings(**settings),
    )


def query_of(vectors, slides, name, groups, exclude=True) -> SlideQuery:
    own = vectors[[s == name for s in slides]]
    return SlideQuery(own, own.mean(axis=0), groups[name] if exclude else None)


@pytest.mark.parametrize("aggregation", [Aggregation.MEDIAN_MIN, Aggregation.MEAN_MAX])
def test_set_aggregations_equal_brute_force_when_every_item_is_retrieved(aggregation):
    vectors, slides, groups, ids = seeded_archive()
    searcher = searcher_over(vectors, slides, groups, ids, item_k=len(ids), rescore=0)
    query = query_of(vectors, slides, "slide-04", groups)
    found = searcher.search(query, SLIDES, aggregation)
    expected = brute_force(query.vectors, vectors, slides, groups, "patient-2", aggregation)
    assert [r.target for r in found] == [name for name, _ in expected]
    np.testing.assert_allclose([r.score for r in found], [s for _, s in expected], atol=1e-5)


@pytest.mark.parametrize("aggregation", [Aggregation.MEDIAN_MIN, Aggregation.MEAN_MAX])
def test_rescoring_makes_shallow_item_lists_exact_for_candidates(aggregation):
    vectors, slides, groups, ids = seeded_archive(1)
    searcher = searcher_over(vectors, slides, groups, ids, item_k=3, rescore=SLIDES)
    query = query_of(vectors, slides, "slide-07", groups)
    found = searcher.search(query, 5, aggregation)
    expected = brute_force(query.vectors, vectors, slides, groups, "patient-3", aggregation)
    # The slides the items retrieved carry their exact set-to-set scores, in exact order.
    exact = dict(expected)
    for result in found:
        assert result.score == pytest.approx(exact[result.target], abs=1e-5)
    returned = {r.target for r in found}
    assert [r.target for r in found] == [name for name, _ in expected if name in returned]
    assert found[0].target == expected[0][0]


def test_imputed_scores_never_fall_below_the_exact_ones():
    vectors, slides, groups, ids = seeded_archive(2)
    searcher = searcher_over(vectors, slides, groups, ids, item_k=4, rescore=0)
    query = query_of(vectors, slides, "slide-00", groups)
    exact = dict(
        brute_force(query.vectors, vectors, slides, groups, "patient-0", Aggregation.MEAN_MAX)
    )
    for result in searcher.search(query, SLIDES, Aggregation.MEAN_MAX):
        # A slide an item did not retrieve gets that item's k-th score: an upper bound.
        assert result.score >= exact[result.target] - 1e-5


def test_vote_counts_the_item_hits_of_each_slide():
    vectors, slides, groups, ids = seeded_archive(3)
    item_k = 6
    searcher = searcher_over(vectors, slides, groups, ids, item_k=item_k)
    query = query_of(vectors, slides, "slide-05", groups)
    found = searcher.search(query, SLIDES, Aggregation.VOTE)
    similarity = unit(query.vectors) @ unit(vectors).T
    eligible = np.array([groups[s] != "patient-2" for s in slides])
    votes: dict[str, int] = {}
    best: dict[str, float] = {}
    for row in similarity:
        masked = np.where(eligible, row, -np.inf)
        for column in np.argsort(-masked, kind="stable")[:item_k]:
            votes[slides[column]] = votes.get(slides[column], 0) + 1
            best[slides[column]] = max(best.get(slides[column], -np.inf), row[column])
    expected = sorted(votes, key=lambda name: (-votes[name], -best[name], name))
    assert [r.target for r in found] == expected


def test_mean_aggregation_ranks_slide_means_by_cosine():
    vectors, slides, groups, ids = seeded_archive(4)
    searcher = searcher_over(vectors, slides, groups, ids)
    query = query_of(vectors, slides, "slide-09", groups)
    found = searcher.search(query, 4, Aggregation.MEAN)
    names = sorted(set(slides))
    means = np.stack([vectors[[s == n for s in slides]].mean(axis=0) for n in names])
    cosine = unit(query.mean[None]) @ unit(means).T
    reference = sorted(
        ((n, float(c)) for n, c in zip(names, cosine[0], strict=True) if groups[n] != "patient-4"),
        key=lambda pair: -pair[1],
    )[:4]
    assert [r.target for r in found] == [name for name, _ in reference]


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_the_query_patients_own_slides_never_come_back(aggregation):
    vectors, slides, groups, ids = seeded_archive(5)
    searcher = searcher_over(vectors, slides, groups, ids, item_k=5)
    query = query_of(vectors, slides, "slide-06", groups)
    found = searcher.search(query, SLIDES, aggregation)
    assert found
    assert all(result.group != "patient-3" for result in found)
    assert {"slide-06", "slide-07"}.isdisjoint(r.target for r in found)


def test_without_exclusion_a_slide_finds_itself_first():
    vectors, slides, groups, ids = seeded_archive(6)
    searcher = searcher_over(vectors, slides, groups, ids)
    query = query_of(vectors, slides, "slide-10", groups, exclude=False)
    assert searcher.search(query, 1, Aggregation.MEAN_MAX)[0].target == "slide-10"


def test_results_grouped_by_case_score_each_case_as_one_item_set():
    vectors, slides, groups, ids = seeded_archive(7)
    searcher = searcher_over(vectors, slides, groups, ids, item_k=len(ids), rescore=0)
    catalog = searcher.catalog
    query = case_query(catalog, "patient-1", lambda wanted: vectors[np.searchsorted(ids, wanted)])
    assert query.exclude_group == "patient-1"
    found = searcher.search(query, 10, Aggregation.MEAN_MAX, group_by="group")
    patient_of_item = [groups[s] for s in slides]
    expected = brute_force(
        query.vectors,
        vectors,
        patient_of_item,
        {g: g for g in set(groups.values())},
        "patient-1",
        Aggregation.MEAN_MAX,
    )
    assert [r.target for r in found] == [name for name, _ in expected]
    assert all(r.target == r.group for r in found)


def test_mean_results_grouped_by_case_take_each_cases_best_slide():
    vectors, slides, groups, ids = seeded_archive(8)
    searcher = searcher_over(vectors, slides, groups, ids)
    query = query_of(vectors, slides, "slide-02", groups)
    by_slide = searcher.search(query, SLIDES, Aggregation.MEAN)
    by_case = searcher.search(query, 3, Aggregation.MEAN, group_by="group")
    first_seen: list[str] = []
    for result in by_slide:
        if result.group not in first_seen:
            first_seen.append(result.group)
    assert [r.target for r in by_case] == first_seen[:3]


def test_evidence_items_belong_to_their_slide_best_first():
    vectors, slides, groups, ids = seeded_archive(9)
    searcher = searcher_over(vectors, slides, groups, ids, item_k=8, evidence=3)
    query = query_of(vectors, slides, "slide-01", groups)
    slide_of_id = dict(zip(ids.tolist(), slides, strict=True))
    for result in searcher.search(query, 5, Aggregation.MEAN_MAX):
        assert 1 <= len(result.evidence) <= 3
        assert all(slide_of_id[e.item_id] == result.target for e in result.evidence)
        scores = [e.score for e in result.evidence]
        assert scores == sorted(scores, reverse=True)
        assert len({e.item_id for e in result.evidence}) == len(result.evidence)


def test_mean_queries_scan_no_items_and_show_each_slides_best_items_as_evidence():
    vectors, slides, groups, ids = seeded_archive(10)
    searcher = searcher_over(vectors, slides, groups, ids, evidence=2)
    scanned: list[int] = []

    def counting_search(queries, k, exclude_group):
        scanned.append(len(queries))
        return searcher.item_search(queries, k, exclude_group)

    counted = dataclasses.replace(searcher, item_search=counting_search)
    query = query_of(vectors, slides, "slide-03", groups)
    found = counted.search(query, 4, Aggregation.MEAN)
    assert scanned == []
    assert [r.target for r in found] == [
        r.target for r in searcher.search(query, 4, Aggregation.MEAN)
    ]
    unit_query, unit_items = unit(query.vectors), unit(vectors)
    for result in found:
        own = np.flatnonzero([s == result.target for s in slides])
        best = (unit_query @ unit_items[own].T).max(axis=0)
        expected = ids[own[np.argsort(-best, kind="stable")[:2]]]
        assert [e.item_id for e in result.evidence] == expected.tolist()
        assert [e.score for e in result.evidence] == pytest.approx(sorted(best)[::-1][:2])


def test_mosaic_keeps_small_sets_whole_and_bounds_large_ones():
    rng = np.random.default_rng(0)
    assert select_mosaic(rng.standard_normal((7, 8)), 10).tolist() == list(range(7))
    centres = 10 * rng.standard_normal((4, 8))
    clustered = np.concatenate([c + rng.standard_normal((300, 8)) for c in centres])
    chosen = select_mosaic(clustered, 8, seed=3)
    assert len(chosen) <= 8
    # Every well-separated cluster is represented, chosen without labels.
    assert sorted(set((chosen // 300).tolist())) == list(range(4))
    assert np.array_equal(chosen, select_mosaic(clustered, 8, seed=3))


def test_a_large_vector_set_query_is_reduced_to_its_mosaic():
    rng = np.random.default_rng(1)
    tiles = rng.standard_normal((2000, DIMENSION)).astype(np.float32)
    query = vector_set_query(tiles, DIMENSION, mosaic=24)
    assert 1 <= len(query.vectors) <= 24
    np.testing.assert_allclose(query.mean, tiles.mean(axis=0), atol=1e-5)


def test_unknown_slide_and_group_ids_are_named():
    vectors, slides, groups, ids = seeded_archive()
    catalog = SlideCatalog.from_items(ids, slides, groups)
    with pytest.raises(UnknownSlideError, match="no-such-slide"):
        slide_query(catalog, "no-such-slide", lambda wanted: vectors)
    with pytest.raises(UnknownGroupError, match="patient-99"):
        case_query(catalog, "patient-99", lambda wanted: vectors)


def test_a_slide_without_items_and_a_set_of_the_wrong_dimension_are_refused():
    vectors, slides, groups, ids = seeded_archive()
    catalog = SlideCatalog.from_items(ids, slides, {**groups, "slide-empty": "patient-9"})
    with pytest.raises(EmptySlideError, match="slide-empty"):
        slide_query(catalog, "slide-empty", lambda wanted: vectors[:0])
    with pytest.raises(EmptySlideError):
        vector_set_query(np.zeros((0, DIMENSION)), DIMENSION)
    with pytest.raises(IndexInputError, match=f"\\(N, {DIMENSION}\\)"):
        vector_set_query(np.zeros((5, DIMENSION + 1)), DIMENSION)


def test_slide_search_over_a_real_index_matches_brute_force_adc(tmp_path: Path):
    codebooks = unit_codebooks(0)
    rng = np.random.default_rng(11)
    records = items(60, groups=6)
    slide_names = [f"slide-{i % 12:02d}" for i in range(60)]
    groups = {f"slide-{s:02d}": f"patient-{s % 6}" for s in range(12)}
    records = [
        dataclasses.replace(record, group=groups[name])
        for record, name in zip(records, slide_names, strict=True)
    ]
    vectors = rng.standard_normal((60, DIM)).astype(np.float32)
    with new_index(tmp_path / "index") as index:
        outcomes = index.add(vectors, records)
        ids = np.array([outcome.id for outcome in outcomes])
        catalog = SlideCatalog.from_items(ids, slide_names, groups)
        searcher = SlideSearcher(
            catalog,
            index_item_search(index),
            index_item_scorer(index),
            settings=SlideSearchSettings(item_k=5, rescore=12),
        )
        query_vectors = vectors[[name == "slide-03" for name in slide_names]]
        query = SlideQuery(query_vectors, query_vectors.mean(axis=0), "patient-3")
        found = searcher.search(query, 12, Aggregation.MEAN_MAX)
    adc = adc_scores(lookup_tables(query_vectors, codebooks), assign_codes(vectors, codebooks))
    expected = []
    for name in sorted(groups):
        if groups[name] == "patient-3":
            continue
        columns = [i for i, s in enumerate(slide_names) if s == name]
        expected.append((name, float(adc[:, columns].max(axis=1).mean())))
    expected.sort(key=lambda pair: (-pair[1], pair[0]))
    assert [r.target for r in found] == [name for name, _ in expected][: len(found)]
    np.testing.assert_allclose(
        [r.score for r in found], [s for _, s in expected][: len(found)], atol=1e-4
    )
    assert all(r.group != "patient-3" for r in found)
