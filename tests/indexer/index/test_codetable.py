"""CodeTable ranking: exact ADC top-k with ties in id order, whatever path answers."""

import numpy as np
import pytest

from indexer.index.codetable import ALL, NO_FILTER, NONE, CodeTable, Columns, TermFilter
from indexer.index.pq import adc_scores, lookup_tables
from tests.indexer.index_helpers import M, descriptors_near_codewords, unit_codebooks


def columns(count: int) -> Columns:
    positions = np.arange(count, dtype=np.int32)
    return Columns(positions % 3, positions % 2, positions % 7)


def table_of(codes: np.ndarray, codebook_size: int = 16) -> tuple[CodeTable, np.ndarray]:
    """A table over ``codes`` with ids 10, 20, 30, ... (gaps, as after deletions)."""
    table = CodeTable(unit_codebooks(codebook_size=codebook_size))
    ids = 10 * np.arange(1, len(codes) + 1, dtype=np.int64)
    table.append(codes, ids, columns(len(codes)))
    return table, ids


def expected_top_k(
    table: CodeTable, codes: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, keep=None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every score, then score descending and id ascending."""
    scores = adc_scores(lookup_tables(queries, table.codebooks), codes)
    if keep is not None:
        scores = np.where(keep[None, :], scores, -np.inf)
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def few_distinct_codes(count: int, distinct: int, seed: int = 3) -> np.ndarray:
    """Codes drawn from a handful of patterns: long runs of exactly tied scores."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 16, (distinct, M)).astype(np.uint8)
    return patterns[rng.integers(0, distinct, count)]


@pytest.mark.parametrize("k", [1, 10, 150])
@pytest.mark.parametrize("query_count", [1, 6])
def test_tied_runs_longer_than_the_shortlist_come_back_in_id_order(k, query_count):
    codes = few_distinct_codes(3000, distinct=12)
    table, ids = table_of(codes)
    queries = descriptors_near_codewords(query_count, table.codebooks, seed=5)
    scores, found = table.search(queries, k)
    expected_scores, expected_ids = expected_top_k(table, codes, ids, queries, k)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_filtered_and_tombstoned_searches_keep_the_same_order():
    codes = few_distinct_codes(3000, distinct=40)
    table, ids = table_of(codes)
    table.remove(ids[::5])
    queries = descriptors_near_codewords(4, table.codebooks, seed=6)
    for term_filter, keep in (
        (TermFilter(), np.ones(len(ids), dtype=bool)),
        (TermFilter(label=1), np.arange(len(ids)) % 3 == 1),
        (
            TermFilter(label=2, exclude_group=4),
            (np.arange(len(ids)) % 3 == 2) & (np.arange(len(ids)) % 7 != 4),
        ),
    ):
        keep = keep & (np.arange(len(ids)) % 5 != 0)
        scores, found = table.search(queries, 20, table.eligible(term_filter))
        expected_scores, expected_ids = expected_top_k(table, codes, ids, queries, 20, keep)
        np.testing.assert_array_equal(found, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_distinct_scores_match_brute_force_on_both_index_layouts():
    for codebook_size in (16, 256):
        rng = np.random.default_rng(codebook_size)
        codes = rng.integers(0, codebook_size, (2000, M)).astype(np.uint8)
        table, ids = table_of(codes, codebook_size)
        queries = descriptors_near_codewords(8, table.codebooks, seed=7)
        scores, found = table.search(queries, 25)
        expected_scores, expected_ids = expected_top_k(table, codes, ids, queries, 25)
        np.testing.assert_array_equal(found, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)


def test_rows_are_padded_when_fewer_items_are_eligible():
    table, _ = table_of(few_distinct_codes(30, distinct=5))
    scores, found = table.search(descriptors_near_codewords(2, table.codebooks), 40)
    assert found.shape == (2, 40)
    assert (found[:, :30] > 0).all() and (found[:, 30:] == -1).all()
    assert np.isneginf(scores[:, 30:]).all()
    _, none_found = table.search(
        descriptors_near_codewords(1, table.codebooks), 3, table.eligible(NONE)
    )
    assert (none_found == -1).all()


@pytest.mark.parametrize("codebook_size", [16, 256])
@pytest.mark.parametrize("num_codebooks", [16, 32])
def test_longer_codes_match_brute_force_unfiltered_and_filtered(num_codebooks, codebook_size):
    """More sub-spaces add more 8-bit table rounding to FastScan's shortlist; the exact re-rank
    must still return brute force's top-k, on the FAISS re-rank path and on the masked one."""
    rng = np.random.default_rng(num_codebooks)
    raw = rng.standard_normal((num_codebooks, codebook_size, 8)).astype(np.float32)
    codebooks = raw / np.linalg.norm(raw, axis=2, keepdims=True)
    table = CodeTable(codebooks)
    # Codes clustered around a few hundred centres, as a trained model's are: near-ties abound.
    centres = rng.integers(0, codebook_size, (300, num_codebooks))
    clustered = centres[rng.integers(0, 300, 20_000)]
    flip = rng.random(clustered.shape) < 0.3
    noise = rng.integers(0, codebook_size, clustered.shape)
    codes = np.where(flip, noise, clustered).astype(np.uint8)
    ids = 10 * np.arange(1, len(codes) + 1, dtype=np.int64)
    table.append(codes, ids, columns(len(codes)))
    centre_vectors = codebooks[np.arange(num_codebooks)[None, :], centres[:6]].reshape(6, -1)
    queries = (centre_vectors + 0.5 * rng.standard_normal(centre_vectors.shape)).astype(np.float32)
    for term_filter in (NO_FILTER, TermFilter(dataset=1)):
        eligible = table.eligible(term_filter)
        scores, found = table.search(queries, 25, eligible)
        keep = None if eligible is ALL else eligible
        expected_scores, expected_ids = expected_top_k(table, codes, ids, queries, 25, keep)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
        np.testing.assert_array_equal(found, expected_ids)


def test_no_filter_allows_every_item_and_none_allows_no_item():
    table, ids = table_of(few_distinct_codes(30, distinct=5))
    assert not NO_FILTER.constrained and TermFilter(label=0).constrained
    assert table.eligible(NO_FILTER) is ALL
    assert not table.eligible(NONE).any()  # type: ignore[union-attr]
    table.remove(ids[:3])
    # With tombstones "no filter" is a mask of the live items.
    mask = table.eligible(NO_FILTER)
    assert mask is not ALL and mask.sum() == 27
    # Excluding a group that is NONE leaves out nothing; excluding group 0 drops every 7th item.
    kept = table.eligible(TermFilter(exclude_group=0))
    assert kept is not ALL and kept.sum() == 27 - sum(1 for i in range(3, 30) if i % 7 == 0)
