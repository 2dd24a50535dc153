"""A sharded index answers exactly as one index fed the same adds; routing, durability, refusals."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.index.metadata import FinishedSource
from indexer.index.pq import adc_scores, assign_codes, lookup_tables
from indexer.index.shards import (
    SHARDS_MANIFEST,
    LocalShard,
    ShardedIndex,
    ShardedIndexError,
    shard_of,
)
from indexer.index.store import AddOutcome, ArchiveIndex, Hit, NewItem, SearchFilters
from tests.indexer.index_helpers import (
    M,
    descriptors_near_codewords,
    items,
    new_index,
    unit_codebooks,
)

CARD = {"backbone": "synthetic", "num_codebooks": M, "codebook_size": 16}
FILTERS = [
    None,
    SearchFilters(label="class-1"),
    SearchFilters(exclude_group="patient-4"),
    SearchFilters(label="class-2", dataset="synthetic", exclude_group="patient-3"),
    SearchFilters(dataset="nowhere"),
]


def new_sharded(directory: Path, shards: int, seed: int = 0) -> ShardedIndex:
    return ShardedIndex.create_from_codebooks(
        directory, unit_codebooks(seed), card=CARD, shard_count=shards
    )


def archive_with_ties(codebooks: np.ndarray) -> tuple[np.ndarray, list[NewItem]]:
    """1200 items, the last 300 copying the codes of the first 300 under other hashes and
    groups: blocks of equal scores whose members lie in different shards."""
    vectors = descriptors_near_codewords(900, codebooks)
    vectors = np.concatenate([vectors, vectors[:300]])
    records = items(1200, groups=23)
    return vectors, records


def comparable(results: list[list[Hit]]) -> list[list[tuple[object, ...]]]:
    """Hits without the time each item was added (the two indexes were filled moments apart)."""
    return [
        [(hit.id, hit.score, hit.record and replace(hit.record, added_at=0.0)) for hit in hits]
        for hits in results
    ]


def fill(
    index: ArchiveIndex | ShardedIndex, vectors: np.ndarray, records: list[NewItem]
) -> list[AddOutcome]:
    outcomes = []
    for start in range(0, len(records), 250):
        outcomes += index.add(vectors[start : start + 250], records[start : start + 250])
    return outcomes


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    index = new_index(tmp_path_factory.mktemp("single") / "index")
    vectors, records = archive_with_ties(index.codebooks)
    fill(index, vectors, records)
    yield index
    index.close()


@pytest.mark.parametrize("shard_count", [1, 3, 4])
def test_sharded_search_equals_unsharded_search_in_ids_and_scores(tmp_path, single, shard_count):
    with new_sharded(tmp_path / "sharded", shard_count) as sharded:
        vectors, records = archive_with_ties(sharded.codebooks)
        fill(sharded, vectors, records)
        assert len(sharded) == len(single) == 1200
        assert min(len(shard) for shard in sharded.shards) > 0
        queries = np.concatenate(
            [descriptors_near_codewords(20, sharded.codebooks, seed=9), vectors[:10]]
        )
        for filters in FILTERS:
            for k in (1, 10, 40):
                expected = single.search_arrays(queries, k, filters)
                got = sharded.search_arrays(queries, k, filters)
                assert np.array_equal(got[1], expected[1]), (filters, k)
                assert np.array_equal(got[0], expected[0]), (filters, k)
            assert comparable(sharded.search(queries, 10, filters)) == comparable(
                single.search(queries, 10, filters)
            )


def test_after_a_group_is_removed_sharded_search_still_equals_unsharded_search(tmp_path):
    with new_index(tmp_path / "single") as single, new_sharded(tmp_path / "sharded", 3) as sharded:
        vectors, records = archive_with_ties(sharded.codebooks)
        for index in (single, sharded):
            fill(index, vectors, records)
            # One shard now holds tombstones, the others none: their paths differ unless merged
            # by one rule.
            index.remove([n + 1 for n, r in enumerate(records) if r.group == "patient-5"])
        assert len(sharded) == len(single) == 1200 - 52
        assert sum(shard.tombstones > 0 for shard in sharded.shards) == 1
        queries = np.concatenate(
            [descriptors_near_codewords(20, sharded.codebooks, seed=9), vectors[:10]]
        )
        for filters in (None, SearchFilters(exclude_group="patient-4")):
            expected, got = (
                single.search_arrays(queries, 25, filters),
                sharded.search_arrays(queries, 25, filters),
            )
            assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])


def test_ties_between_shards_are_ordered_by_id_as_in_one_index(tmp_path):
    with new_sharded(tmp_path / "sharded", 4) as sharded:
        vectors, records = archive_with_ties(sharded.codebooks)
        fill(sharded, vectors, records)
        # A query exactly at an item's code, whose copy (300 items on) lies in another shard:
        # the two score the same and must come out in id order.
        home = [shard_of(r.group, r.content_hash, 4) for r in records]
        first = next(n for n in range(300) if home[n] != home[n + 900])
        query = vectors[first : first + 1]
        scores, ids = sharded.search_arrays(query, 30)
        # Independent reference: brute-force ADC over every code, ordered (score desc, id asc).
        exact = adc_scores(
            lookup_tables(query, sharded.codebooks), assign_codes(vectors, sharded.codebooks)
        )[0]
        order = np.lexsort((np.arange(1, 1201), -exact))[:30]
        assert np.array_equal(ids[0], order + 1)
        assert np.allclose(scores[0], exact[order], atol=1e-5)
        assert list(ids[0][:2]) == [first + 1, first + 901] and scores[0][0] == scores[0][1]


def test_ids_and_duplicates_are_reported_as_one_index_reports_them(tmp_path):
    vectors = descriptors_near_codewords(30, unit_codebooks())
    records = [*items(20), *items(5, start=3), *items(5, start=40)]  # 5 duplicates of 3..7
    with new_index(tmp_path / "single") as single, new_sharded(tmp_path / "sharded", 3) as sharded:
        for index in (single, sharded):
            index.add(vectors[:10], records[:10])
        assert sharded.add(vectors[10:], records[10:]) == single.add(vectors[10:], records[10:])
        again = sharded.add(vectors[:2], [records[25], records[25]])
        assert [(o.id, o.duplicate_of) for o in again] == [(None, 21), (None, 21)]


def test_items_go_to_their_groups_shard_and_a_group_deletion_touches_only_that_shard(tmp_path):
    with new_sharded(tmp_path / "sharded", 3) as sharded:
        vectors = descriptors_near_codewords(210, sharded.codebooks)
        records = items(210, groups=7)
        outcomes = sharded.add(vectors, records)
        added = [outcome.id for outcome in outcomes if outcome.id is not None]
        assert len(added) == 210
        for item_id, record in zip(added, records, strict=True):
            holder = sharded.shard_holding(item_id)
            assert holder == shard_of(record.group, record.content_hash, 3)
        ungrouped = NewItem(source="loose.png", content_hash="loose")
        (loose,) = sharded.add(vectors[:1], [ungrouped])
        assert loose.id is not None
        assert sharded.shard_holding(loose.id) == shard_of(None, "loose", 3)
        sharded.flush()
        patient = [i for i, r in zip(added, records, strict=True) if r.group == "patient-2"]
        home = shard_of("patient-2", "", 3)
        sizes = [len(shard) for shard in sharded.shards]
        assert sharded.remove(patient) == 30
        assert [len(shard) for shard in sharded.shards] == [
            size - (30 if number == home else 0) for number, size in enumerate(sizes)
        ]
        assert [shard.unsaved_changes for shard in sharded.shards] == [
            30 if number == home else 0 for number in range(3)
        ]
        assert sharded.get(patient[0]) is None and sharded.get(added[0]) is not None


def test_unflushed_adds_and_removals_survive_a_crash_in_every_shard(tmp_path):
    sharded = new_sharded(tmp_path / "sharded", 3)
    vectors = descriptors_near_codewords(300, sharded.codebooks)
    sharded.add(vectors[:200], items(200))
    sharded.flush()
    sharded.add(vectors[200:], items(100, start=200))
    sharded.remove([3, 250])
    expected = sharded.search(vectors[:5], 8)
    for shard in sharded.shards:
        assert isinstance(shard, LocalShard)
        shard._metadata.close()  # the process dies: no flush, no close
    with ShardedIndex.open(tmp_path / "sharded") as reopened:
        assert len(reopened) == 298
        assert reopened.search(vectors[:5], 8) == expected
        (outcome,) = reopened.add(vectors[:1], items(1, start=999))
        assert outcome.id == 301  # the id counter went on where it stopped


def test_source_journal_is_found_again_through_its_shard(tmp_path):
    with new_sharded(tmp_path / "sharded", 4) as sharded:
        finished = [FinishedSource(f"slides/{n}.svs", f"file-{n}", 3, 1) for n in range(12)]
        sharded.journal.mark_sources_finished(finished)
        assert [sharded.journal.finished_source(entry.source) for entry in finished] == [
            entry.file_hash for entry in finished
        ]
        assert sharded.journal.source_with_hash("file-7") == "slides/7.svs"
        assert sharded.journal.finished_source("slides/unknown.svs") is None


def test_stats_sum_the_shards(tmp_path):
    with new_sharded(tmp_path / "sharded", 3) as sharded:
        sharded.add(descriptors_near_codewords(90, sharded.codebooks), items(90))
        stats = sharded.stats()
        parts = sharded.shard_stats()
        assert stats.items == 90 == sum(part.items for part in parts)
        assert stats.labels == {"class-0": 30, "class-1": 30, "class-2": 30}
        assert stats.memory_bytes == sum(part.memory_bytes for part in parts)


# ---- sharded indexes that must be refused ------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    with new_sharded(tmp_path / "sharded", 3) as sharded:
        sharded.add(descriptors_near_codewords(60, sharded.codebooks), items(60))
    return tmp_path / "sharded"


def test_a_shard_with_other_codebooks_is_refused(saved, tmp_path):
    shutil.rmtree(saved / "shard-001")
    new_index(saved / "shard-001", seed=5).close()
    with pytest.raises(ShardedIndexError, match="codebook_fingerprint"):
        ShardedIndex.open(saved)


def test_a_shard_with_another_model_card_key_is_refused(saved):
    shutil.rmtree(saved / "shard-002")
    ArchiveIndex.create_from_codebooks(
        saved / "shard-002", unit_codebooks(0), card={**CARD, "backbone": "other"}
    ).close()
    with pytest.raises(ShardedIndexError, match="card_key"):
        ShardedIndex.open(saved)


def test_a_missing_or_extra_shard_is_refused(saved):
    shutil.move(saved / "shard-002", saved / "elsewhere")
    with pytest.raises(ShardedIndexError, match="shard directories"):
        ShardedIndex.open(saved)
    shutil.move(saved / "elsewhere", saved / "shard-002")
    shutil.copytree(saved / "shard-002", saved / "shard-003")
    with pytest.raises(ShardedIndexError, match="shard directories"):
        ShardedIndex.open(saved)


def test_a_shard_count_that_disagrees_with_the_list_is_refused(saved):
    manifest = json.loads((saved / SHARDS_MANIFEST).read_text())
    (saved / SHARDS_MANIFEST).write_text(json.dumps({**manifest, "shard_count": 2}))
    with pytest.raises(ShardedIndexError, match="for a count of 2"):
        ShardedIndex.open(saved)


def test_a_shard_holding_ids_beyond_the_counter_is_refused(saved):
    manifest = json.loads((saved / SHARDS_MANIFEST).read_text())
    (saved / SHARDS_MANIFEST).write_text(json.dumps({**manifest, "next_id": 5}))
    with pytest.raises(ShardedIndexError, match="allocates from 5"):
        ShardedIndex.open(saved)


def test_explicit_ids_at_or_below_held_ids_are_refused_before_anything_is_written(tmp_path):
    with new_index(tmp_path / "index") as index:
        vectors = descriptors_near_codewords(3, index.codebooks)
        index.add(vectors[:1], items(1), item_ids=[10])
        with pytest.raises(ValueError, match="increasing ids above 10"):
            index.add(vectors[1:], items(2, start=1), item_ids=[11, 9])
        assert len(index) == 1 and index.get(10) is not None


def test_shards_asked_from_threads_answer_as_shards_asked_in_turn(saved):
    with (
        ShardedIndex.open(saved, parallel=True) as threaded,
        ShardedIndex.open(saved, parallel=False) as in_turn,
    ):
        queries = descriptors_near_codewords(12, threaded.codebooks, seed=4)
        for filters in (None, SearchFilters(label="class-1")):
            assert comparable(threaded.search(queries, 9, filters)) == comparable(
                in_turn.search(queries, 9, filters)
            )


def test_scores_of_given_items_equal_the_unsharded_index_and_none_for_absent_ones(tmp_path, single):
    with new_sharded(tmp_path / "sharded", 3) as sharded:
        vectors, records = archive_with_ties(sharded.codebooks)
        fill(sharded, vectors, records)
        query = descriptors_near_codewords(1, sharded.codebooks, seed=5)
        wanted = [1, 2, 600, 1199, 1200, 99_999]
        expected = single.scores_of(query, wanted)
        assert sharded.scores_of(query, wanted) == pytest.approx(expected, abs=1e-6)
        assert expected[-1] is None and all(score is not None for score in expected[:-1])


class ReplyLostShard(LocalShard):
    """A shard whose next add commits and then fails, as a remote shard lost between its
    commit and its reply does (`service.ray_serve.ShardClient`)."""

    fail_next_add = False

    def add_codes(self, codes, records, *, item_ids=None, fine=None):
        outcomes = super().add_codes(codes, records, item_ids=item_ids, fine=fine)
        if ReplyLostShard.fail_next_add:
            ReplyLostShard.fail_next_add = False
            raise ConnectionError("the shard's reply was lost after its commit")
        return outcomes


def test_a_write_that_failed_part_way_is_recounted_by_the_next_write(tmp_path):
    """An add for two shards whose first shard commits and then fails: the count cannot know
    what was stored, so the next write counts the shards again."""
    with new_sharded(tmp_path / "sharded", 2) as sharded:
        vectors = descriptors_near_codewords(60, sharded.codebooks)
        sharded.add(vectors[:20], items(20))
    with ShardedIndex.open(tmp_path / "sharded", open_shard=ReplyLostShard.open_shard) as sharded:
        assert len(sharded) == 20
        spanning = items(20, start=20)
        assert {shard_of(r.group, r.content_hash, 2) for r in spanning} == {0, 1}
        ReplyLostShard.fail_next_add = True
        with pytest.raises(ConnectionError):
            sharded.add(vectors[20:40], spanning)
        # The first shard written committed its part and lost its reply; the other was not
        # reached. The failed call could not count what it stored.
        stored = sum(len(shard) for shard in sharded.shards)
        assert 20 < stored < 40
        assert len(sharded) == 20
        (outcome,) = sharded.add(vectors[40:41], items(1, start=40))
        assert outcome.id is not None
        assert len(sharded) == stored + 1 == sum(len(shard) for shard in sharded.shards)
