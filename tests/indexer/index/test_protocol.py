"""`Index`: one index directory and a sharded one answer every call of the contract alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from indexer.index.metadata import FinishedSource
from indexer.index.protocol import Index
from indexer.index.records import ItemRecord
from indexer.index.shards import ShardedIndex
from indexer.index.store import SearchFilters
from tests.indexer.index_helpers import descriptors_near_codewords, items, new_index


def timeless(record: ItemRecord | None) -> ItemRecord | None:
    """A record without the time it was added (the two indexes add a moment apart)."""
    return None if record is None else replace(record, added_at=0.0)


def answers(index: Index, vectors: np.ndarray) -> dict[str, object]:
    """Everything the contract answers after the same adds, removal and journal entries."""
    outcomes = index.add(vectors[:40], items(40))
    repeated = index.add(vectors[:2], items(2))
    removed = index.remove([3, 7, 999])
    index.journal.mark_sources_finished([FinishedSource("archive/a.png", "hash-a", 4, 1)])
    hits = index.search(vectors[:6], 5, SearchFilters(label="class-1", exclude_group="patient-2"))
    scores, ids = index.search_arrays(vectors[:6], 50)
    return {
        "outcomes": [(o.id, o.duplicate_of) for o in outcomes + repeated],
        "removed": removed,
        "hits": [[(hit.id, hit.score, timeless(hit.record)) for hit in row] for row in hits],
        "arrays": (scores.tolist(), ids.tolist()),
        "get": timeless(index.get(5)),
        "thumbnail": index.thumbnail(5),
        "scores_of": index.scores_of(vectors[:1], [1, 3, 5]),
        "known": index.known_hashes(["hash-1", "hash-3", "hash-9"]),
        "finished": index.journal.finished_source("archive/a.png"),
        "twin": index.journal.source_with_hash("hash-a"),
        "len": len(index),
        "items": index.stats().items,
        "dim": index.descriptor_dim,
    }


def test_one_index_and_three_shards_answer_the_contract_alike(tmp_path):
    single: Index = new_index(tmp_path / "single")
    sharded: Index = ShardedIndex.create_from_codebooks(
        tmp_path / "sharded", single.codebooks, card={}, shard_count=3
    )
    with single, sharded:
        vectors = descriptors_near_codewords(40, single.codebooks)
        expected = answers(single, vectors)
        assert expected["len"] == 38 and expected["finished"] == "hash-a"
        assert answers(sharded, vectors) == expected
