"""The second stage: 8-bit codes of the indexed vectors re-rank the compact shortlist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.index.errors import IndexInputError
from indexer.index.manifest import MANIFEST
from indexer.index.second_stage import (
    FineQuantiser,
    SecondStageSettings,
    rerank_shortlists,
    unit_rows,
)
from indexer.index.store import ArchiveIndex, SearchFilters
from tests.indexer.index_helpers import M, descriptors_near_codewords, items, unit_codebooks

FINE_DIM = 24
COUNT = 1500
FACTOR = 5


def fine_vectors(count: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FINE_DIM)).astype(np.float32)


def two_stage_index(directory: Path, factor: int = FACTOR) -> ArchiveIndex:
    return ArchiveIndex.create_from_codebooks(
        directory,
        unit_codebooks(),
        card={"backbone": "synthetic", "num_codebooks": M, "input_dim": FINE_DIM},
        second_stage=SecondStageSettings(shortlist_factor=factor),
    )


@pytest.fixture
def filled(tmp_path: Path):
    index = two_stage_index(tmp_path / "index")
    index.add(
        descriptors_near_codewords(COUNT, index.codebooks), items(COUNT), fine=fine_vectors(COUNT)
    )
    yield index
    index.close()


def brute_force_on_shortlist(
    index: ArchiveIndex,
    queries: np.ndarray,
    fine_queries: np.ndarray,
    k: int,
    filters: SearchFilters | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every fine code of the ADC shortlist decoded and scored, best first."""
    _, shortlists = index.search_arrays(queries, k * index.shortlist_factor, filters)
    quantiser = FineQuantiser.train(unit_rows(fine_vectors(COUNT)))
    decoded = quantiser.decode(quantiser.encode(unit_rows(fine_vectors(COUNT))))
    unit_queries = unit_rows(fine_queries)
    all_scores, all_ids = [], []
    for query, shortlist in zip(unit_queries, shortlists, strict=True):
        ids = np.sort(shortlist[shortlist >= 0])
        scores = np.array([decoded[i - 1] @ query for i in ids], dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda n: (-scores[n], ids[n]))[:k]
        all_scores.append(scores[order])
        all_ids.append(ids[order])
    return np.array(all_scores), np.array(all_ids)


def test_quantiser_codes_are_one_byte_per_dimension_and_decode_close_to_the_vectors() -> None:
    vectors = unit_rows(fine_vectors(500))
    quantiser = FineQuantiser.train(vectors)
    codes = quantiser.encode(vectors)
    assert codes.shape == (500, FINE_DIM) and codes.dtype == np.uint8
    assert np.abs(quantiser.decode(codes) - vectors).max() < 0.01
    again = FineQuantiser.from_bytes(FINE_DIM, quantiser.to_bytes())
    assert again.fingerprint == quantiser.fingerprint
    assert np.array_equal(again.decode(codes), quantiser.decode(codes))


def test_rerank_orders_each_shortlist_by_decoded_inner_product_ties_by_id() -> None:
    quantiser = FineQuantiser.train(unit_rows(fine_vectors(50)))
    codes = quantiser.encode(unit_rows(fine_vectors(50)))
    codes[7] = codes[3]  # a tie: the lower id comes first
    query = quantiser.decode(codes[3:4])
    shortlists = np.array([[9, 7, 3, 20, -1, -1]])
    scores, ids = rerank_shortlists(query, shortlists, lambda i: codes[i], quantiser, 5)
    assert ids[0, :2].tolist() == [3, 7]
    assert ids[0, 4] == -1 and scores[0, 4] == -np.inf
    assert set(ids[0, :4].tolist()) == {3, 7, 9, 20}
    assert np.all(np.diff(scores[0, :4]) <= 0)


def test_two_stage_search_equals_brute_force_over_the_fine_codes_of_its_shortlist(
    filled: ArchiveIndex,
) -> None:
    queries = descriptors_near_codewords(20, filled.codebooks, seed=8)
    fine_queries = fine_vectors(20, seed=9)
    scores, ids = filled.search_arrays(queries, 10, fine_queries=fine_queries)
    expected_scores, expected_ids = brute_force_on_shortlist(filled, queries, fine_queries, 10)
    assert np.array_equal(ids, expected_ids)
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_two_stage_search_applies_filters_before_the_shortlist(filled: ArchiveIndex) -> None:
    queries = descriptors_near_codewords(10, filled.codebooks, seed=8)
    fine_queries = fine_vectors(10, seed=9)
    filters = SearchFilters(label="class-1", exclude_group="patient-4")
    results = filled.search(queries, 10, filters, fine_queries=fine_queries)
    _, expected_ids = brute_force_on_shortlist(filled, queries, fine_queries, 10, filters)
    assert [[hit.id for hit in hits] for hits in results] == expected_ids.tolist()
    assert all(
        hit.record is not None and hit.record.label == "class-1" and hit.record.group != "patient-4"
        for hits in results
        for hit in hits
    )


def test_without_fine_queries_the_compact_codes_alone_rank(filled: ArchiveIndex) -> None:
    queries = descriptors_near_codewords(5, filled.codebooks, seed=8)
    _, ids = filled.search_arrays(queries, 10)
    _, shortlist = filled.search_arrays(queries, 10 * FACTOR)
    assert np.array_equal(ids, shortlist[:, :10])


def test_the_re_rank_finds_the_fine_nearest_neighbour_the_compact_codes_miss(
    filled: ArchiveIndex,
) -> None:
    # Queries equal to stored items' fine vectors: the item itself must come first whenever the
    # compact shortlist holds it.
    targets = np.arange(0, COUNT, 97)
    queries = descriptors_near_codewords(COUNT, filled.codebooks)[targets]
    _, ids = filled.search_arrays(queries, 10, fine_queries=fine_vectors(COUNT)[targets])
    assert np.array_equal(ids[:, 0], targets + 1)


def test_an_add_without_fine_vectors_is_refused_by_an_index_with_a_second_stage(
    filled: ArchiveIndex,
) -> None:
    with pytest.raises(IndexInputError, match="second stage"):
        filled.add(descriptors_near_codewords(2, filled.codebooks), items(2, start=COUNT))
    with pytest.raises(IndexInputError, match="fine vectors must have shape"):
        filled.add(
            descriptors_near_codewords(2, filled.codebooks),
            items(2, start=COUNT),
            fine=np.zeros((2, FINE_DIM + 1), dtype=np.float32),
        )


def test_an_index_without_a_second_stage_refuses_fine_vectors_and_writes_no_fine_files(
    tmp_path: Path,
) -> None:
    from tests.indexer.index_helpers import new_index

    index = new_index(tmp_path / "plain")
    with pytest.raises(IndexInputError, match="no second stage"):
        index.add(descriptors_near_codewords(2, index.codebooks), items(2), fine=fine_vectors(2))
    index.add(descriptors_near_codewords(50, index.codebooks), items(50))
    index.close()
    manifest = json.loads((tmp_path / "plain" / MANIFEST).read_text())
    assert "second_stage" not in manifest and "fine" not in manifest["snapshot"]
    assert not list((tmp_path / "plain").glob("fine*"))
    assert ArchiveIndex.open(tmp_path / "plain").stats().second_stage is None


def test_an_image_card_cannot_have_a_second_stage(tmp_path: Path) -> None:
    with pytest.raises(IndexInputError, match="feature index"):
        ArchiveIndex.create_from_codebooks(
            tmp_path / "images",
            unit_codebooks(),
            card={"backbone": "synthetic", "num_codebooks": M},
            second_stage=SecondStageSettings(),
        )


def test_the_manifest_and_stats_record_both_stages(filled: ArchiveIndex) -> None:
    filled.flush()
    manifest = json.loads((filled.directory / MANIFEST).read_text())
    stage = manifest["second_stage"]
    assert stage["kind"] == "sq8" and stage["dim"] == FINE_DIM
    assert stage["shortlist_factor"] == FACTOR and len(stage["quantiser_sha256"]) == 64
    fine = manifest["snapshot"]["fine"]
    assert fine["bytes"] >= COUNT * FINE_DIM
    stats = filled.stats()
    assert stats.code_bytes == 4 and stats.second_stage is not None
    assert stats.second_stage["code_bytes"] == FINE_DIM
    assert stats.second_stage["files"] == [
        f"fine.{manifest['snapshot']['generation']}.npy",
        f"fine-ids.{manifest['snapshot']['generation']}.npy",
    ]
    codes = np.load(filled.directory / stats.second_stage["files"][0], mmap_mode="r")
    assert isinstance(codes, np.memmap) and codes.shape == (COUNT, FINE_DIM)


def answers(index: ArchiveIndex) -> tuple[np.ndarray, np.ndarray]:
    queries = descriptors_near_codewords(15, index.codebooks, seed=8)
    return index.search_arrays(queries, 10, fine_queries=fine_vectors(15, seed=9))


def test_adds_and_removals_after_the_snapshot_replay_from_sqlite_after_a_crash(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "index"
    index = two_stage_index(directory)
    descriptors, fine = descriptors_near_codewords(COUNT, index.codebooks), fine_vectors(COUNT)
    index.add(descriptors[:1000], items(1000), fine=fine[:1000])
    index.flush()
    index.add(descriptors[1000:], items(COUNT - 1000, start=1000), fine=fine[1000:])
    removed = [3, 1200]
    index.remove(removed)
    before = answers(index)
    # A crash: no close, no flush; a copy of the directory as the disk holds it.
    crashed = tmp_path / "crashed"
    shutil.copytree(directory, crashed)
    index.close()
    reopened = ArchiveIndex.open(crashed)
    try:
        assert "499 adds and 2 removals replayed" in reopened.opened_from
        after = answers(reopened)
        assert np.array_equal(after[1], before[1])
        assert np.allclose(after[0], before[0])
        assert not set(removed) & set(after[1].ravel().tolist())
    finally:
        reopened.close()
    # After a clean close everything is in the snapshot and removed items never come back.
    clean = ArchiveIndex.open(directory)
    try:
        assert np.array_equal(answers(clean)[1], before[1])
        assert clean.unsaved_changes == 0
    finally:
        clean.close()


def test_a_damaged_fine_snapshot_is_rebuilt_from_sqlite(filled: ArchiveIndex) -> None:
    before = answers(filled)
    filled.close()
    manifest = json.loads((filled.directory / MANIFEST).read_text())
    generation = manifest["snapshot"]["generation"]
    (filled.directory / f"fine.{generation}.npy").write_bytes(b"damaged")
    reopened = ArchiveIndex.open(filled.directory)
    try:
        assert "rebuilt" in reopened.opened_from
        assert np.array_equal(answers(reopened)[1], before[1])
    finally:
        reopened.close()


def test_a_quantiser_other_than_the_manifest_records_is_refused(filled: ArchiveIndex) -> None:
    filled.close()
    from indexer.index.metadata import MetadataStore

    store = MetadataStore(filled.directory / "metadata.sqlite")
    other = FineQuantiser.train(unit_rows(fine_vectors(10, seed=99)))
    store.set_properties({"fine_quantiser": other.to_bytes()})
    store.close()
    from indexer.index.errors import IndexDirectoryError

    with pytest.raises(IndexDirectoryError, match="quantiser"):
        ArchiveIndex.open(filled.directory)


def test_more_like_an_item_uses_its_decoded_fine_code(filled: ArchiveIndex) -> None:
    fine = filled.fine_vectors_of([42])
    query = descriptors_near_codewords(COUNT, filled.codebooks)[41:42]
    _, ids = filled.search_arrays(query, 5, fine_queries=fine)
    assert ids[0, 0] == 42


def sharded_two_stage(directory: Path, shards: int):
    from indexer.index.shards import ShardedIndex

    index = ShardedIndex.create_from_codebooks(
        directory,
        unit_codebooks(),
        card={"backbone": "synthetic", "num_codebooks": M, "input_dim": FINE_DIM},
        shard_count=shards,
        second_stage=SecondStageSettings(shortlist_factor=FACTOR),
    )
    index.add(
        descriptors_near_codewords(COUNT, index.codebooks), items(COUNT), fine=fine_vectors(COUNT)
    )
    return index


def test_a_sharded_index_re_ranks_each_shards_shortlist_and_merges_by_fine_score(
    tmp_path: Path, filled: ArchiveIndex
) -> None:
    from indexer.index.shards import ShardedIndex

    queries = descriptors_near_codewords(15, filled.codebooks, seed=8)
    fine_queries = fine_vectors(15, seed=9)
    with sharded_two_stage(tmp_path / "one", 1) as single:
        # One shard: the unsharded index's answers.
        one = single.search_arrays(queries, 10, fine_queries=fine_queries)
        assert np.array_equal(
            one[1], filled.search_arrays(queries, 10, fine_queries=fine_queries)[1]
        )
    sharded = sharded_two_stage(tmp_path / "three", 3)
    scores, ids = sharded.search_arrays(queries, 10, fine_queries=fine_queries)
    # Brute force over the union of the shards' shortlists, with the one shared range.
    quantiser = sharded.shards[0].quantiser
    assert quantiser is not None
    assert all(shard.quantiser.fingerprint == quantiser.fingerprint for shard in sharded.shards)
    decoded = quantiser.decode(quantiser.encode(unit_rows(fine_vectors(COUNT))))
    for row, (query, fine_query) in enumerate(zip(queries, unit_rows(fine_queries), strict=True)):
        union = np.concatenate(
            [shard.search_arrays(query[None], 10 * FACTOR)[1][0] for shard in sharded.shards]
        )
        union = np.sort(union[union >= 0])
        union_scores = decoded[union - 1] @ fine_query
        best = sorted(range(len(union)), key=lambda n: (-union_scores[n], union[n]))[:10]
        assert ids[row].tolist() == union[best].tolist()
        assert np.allclose(scores[row], union_scores[best], atol=1e-5)
    sharded.close()
    reopened = ShardedIndex.open(tmp_path / "three")
    try:
        assert np.array_equal(
            reopened.search_arrays(queries, 10, fine_queries=fine_queries)[1], ids
        )
        assert reopened.stats().second_stage is not None
    finally:
        reopened.close()


def test_each_stored_item_has_one_fine_code_in_sqlite_and_a_duplicate_adds_none(
    filled: ArchiveIndex,
) -> None:
    import sqlite3

    before = filled.fine_vectors_of([1, 2])
    outcomes = filled.add(
        descriptors_near_codewords(2, filled.codebooks), items(2), fine=fine_vectors(2, seed=50)
    )
    assert not any(outcome.added for outcome in outcomes)
    assert np.array_equal(filled.fine_vectors_of([1, 2]), before)
    filled.remove([5])
    with sqlite3.connect(filled.directory / "metadata.sqlite") as connection:
        ids = [row[0] for row in connection.execute("SELECT item_id FROM fine_codes")]
    assert ids == [i for i in range(1, COUNT + 1) if i != 5]
