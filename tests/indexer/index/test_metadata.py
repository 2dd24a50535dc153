"""The SQLite metadata store on its own: records round trip, the filter vocabulary, the journal
of additions, removals and finished sources, and all-or-nothing writes."""

import sqlite3
from pathlib import Path

import pytest

from indexer.index.metadata import FinishedSource, MetadataStore
from tests.indexer.index_helpers import items


def reopened(store: MetadataStore) -> MetadataStore:
    store.close()
    return MetadataStore(store.path)


def code(number: int) -> bytes:
    return bytes([number % 256, 7, 7, 7])


def test_records_survive_closing_and_reopening_field_for_field(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    new = items(4)
    result = store.insert(new, [code(i) for i in range(4)])
    assert result.new_ids == [1, 2, 3, 4] and result.duplicate_of == [None] * 4
    store = reopened(store)
    for item_id, item in zip(result.new_ids, new, strict=True):
        assert item_id is not None
        record = store.record(item_id)
        assert record is not None
        assert (record.source, record.content_hash, record.label, record.group) == (
            item.source,
            item.content_hash,
            item.label,
            item.group,
        )
        assert (record.dataset, record.tile, record.source_size, record.extra) == (
            item.dataset,
            item.tile,
            item.source_size,
            item.extra,
        )
        assert record.thumbnail == item.thumbnail == store.thumbnail(item_id)
    in_bulk = store.records([4, 2, 99])
    assert sorted(in_bulk) == [2, 4] and in_bulk[2].thumbnail is None  # bulk reads skip them
    assert [row.code for row in store.rows_after(0)] == [code(i) for i in range(4)]
    store.close()


def test_an_item_with_a_stored_content_hash_is_a_duplicate(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    store.insert(items(2), [code(0), code(1)])
    again = items(3)  # hashes 0 and 1 are stored; 2 is new
    result = store.insert(again, [code(0), code(1), code(2)])
    assert result.new_ids == [None, None, 3] and result.duplicate_of == [1, 2, None]
    assert store.count() == 3
    assert store.ids_of_hashes(["hash-2", "hash-0", "unknown"]) == {"hash-2": 3, "hash-0": 1}
    store.close()


def test_filter_terms_are_one_id_per_name_and_kind_and_persist(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    result = store.insert(items(6, labels=2, groups=3), [code(i) for i in range(6)])
    label_ids = result.term_ids["label"]
    assert label_ids[0] == label_ids[2] == label_ids[4] != label_ids[1]
    assert store.term_id("label", "class-0") == label_ids[0]
    assert store.term_id("group", "patient-2") == result.term_ids["group"][2]
    # A label and a group of the same name are different terms; unknown names have none.
    assert store.term_id("label", "patient-2") is None
    assert store.term_id("label", None) is None
    store = reopened(store)
    assert store.term_id("label", "class-1") == label_ids[1]
    assert store.counts_by("label") == {"class-0": 3, "class-1": 3}
    assert store.counts_by("grp") == {"patient-0": 2, "patient-1": 2, "patient-2": 2}
    with pytest.raises(ValueError, match="cannot count by"):
        store.counts_by("thumbnail")
    store.close()


def test_the_journal_replays_additions_and_removals_after_a_snapshot(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    store.insert(items(3), [code(i) for i in range(3)])
    snapshot_last_id, snapshot_seq = 3, store.last_removal_seq()
    store.insert(items(2, start=3), [code(3), code(4)])
    assert store.delete([2, 4, 77]) == [2, 4]  # unknown ids are ignored
    store = reopened(store)
    assert [(row.id, row.code) for row in store.rows_after(snapshot_last_id)] == [(5, code(4))]
    assert store.removals_after(snapshot_seq) == [2, 4]
    assert store.record(2) is None and store.count() == 3
    # Ids only grow: a removed id is never handed out again.
    assert store.insert(items(1, start=10), [code(10)]).new_ids == [6]
    store.close()


def test_finished_sources_are_journalled_with_their_file_hash(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    store.mark_sources_finished([FinishedSource("slide-1.png", "abc", 4, 1)])
    store = reopened(store)
    assert store.finished_source("slide-1.png") == "abc"
    assert store.finished_source("slide-2.png") is None
    assert store.source_with_hash("abc") == "slide-1.png"
    assert store.source_with_hash("def") is None
    store.close()


def test_a_failed_insert_leaves_neither_rows_nor_terms(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    store.insert(items(1), [code(0)])
    with pytest.raises(ValueError, match="2 items but 1 codes"):
        store.insert(items(2, start=5, labels=9), [code(5)])
    with pytest.raises(sqlite3.IntegrityError):
        # The second row takes the id of the stored one: it fails after the first was written.
        store.insert(items(2, start=5, labels=9), [code(5), code(6)], item_ids=[7, 1])
    store = reopened(store)
    assert store.count() == 1 and store.ids_of_hashes(["hash-5"]) == {}
    assert store.term_id("label", "class-5") is None
    store.close()


def test_a_repeated_content_hash_in_one_insert_is_a_duplicate_of_its_first_row(
    tmp_path: Path,
) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    first, second = items(2)
    again = items(1)[0]  # the content hash of `first`, in the same call
    result = store.insert([first, again, second], [code(0), code(9), code(1)])
    assert result.new_ids == [1, None, 2] and result.duplicate_of == [None, 1, None]
    # Terms are given for the rows written only, in their order.
    assert result.term_ids["label"] == [
        store.term_id("label", "class-0"),
        store.term_id("label", "class-1"),
    ]
    assert [row.code for row in store.rows_after(0)] == [code(0), code(1)]
    store.close()


def test_given_ids_are_stored_and_later_ids_continue_above_them(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "metadata.sqlite")
    result = store.insert(items(3), [code(i) for i in range(3)], item_ids=[4, 9, 12])
    assert result.new_ids == [4, 9, 12] and store.last_allocated_id() == 12
    store.delete([12])
    store = reopened(store)
    # As AUTOINCREMENT: above every id ever given, a removed one included.
    assert store.insert(items(2, start=3), [code(3), code(4)]).new_ids == [13, 14]
    store.close()
