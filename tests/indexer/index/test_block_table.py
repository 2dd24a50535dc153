"""Feature rows stored a block per record in the metadata store: one id sequence with the items,
and every read (records, counts, the journal replay, slide rows, fine codes) sees them alike."""

from pathlib import Path

import numpy as np

from indexer.index.metadata import MetadataStore
from indexer.index.row_blocks import FeatureRows
from tests.indexer.index_helpers import items

DIM = 3


def block(source: str, rows: int, label: str = "LUAD") -> FeatureRows:
    return FeatureRows(
        source=source,
        archive="tcga",
        dataset="tcga",
        rows=np.arange(rows, dtype=np.int64),
        slide_ids=[source.removesuffix(".pt")] * rows,
        labels=[label] * rows,
        groups=[f"patient-{source}"] * rows,
    )


def codes(rows: int, first: int) -> bytes:
    return bytes(range(first, first + rows))


def fine(rows: int, value: int) -> bytes:
    return bytes([value]) * (rows * DIM)


def filled(tmp_path: Path) -> MetadataStore:
    """Items 1-3, blocks of rows 4-7 (a.pt) and 8-9 (b.pt), items 10-11."""
    store = MetadataStore(tmp_path / "metadata.sqlite")
    first = items(3)
    store.insert(first, [b"\x01"] * 3, fine_codes=[fine(1, 1)] * 3)
    result = store.insert_rows(
        [block("a.pt", 4), block("b.pt", 2, "LUSC")],
        [codes(4, 10), codes(2, 20)],
        [fine(4, 2), fine(2, 3)],
    )
    assert [ids.tolist() for ids in result.ids] == [[4, 5, 6, 7], [8, 9]]
    later = store.insert(items(2, start=3), [b"\x02"] * 2, fine_codes=[fine(1, 4)] * 2)
    assert later.new_ids == [10, 11]
    return store


def test_rows_and_items_share_one_id_sequence_and_read_back_alike(tmp_path: Path) -> None:
    store = filled(tmp_path)

    assert store.count() == 11 and store.last_allocated_id() == 11
    assert store.count_and_id_sum() == (11, sum(range(1, 12)))
    records = store.records([2, 5, 9, 10, 99])
    assert sorted(records) == [2, 5, 9, 10]
    assert (records[5].source, records[5].extra["row"], records[5].label) == ("a.pt", 1, "LUAD")
    assert records[9].content_hash == "features:tcga/b.pt#1"
    assert [row.id for row in store.rows_after(2)] == list(range(3, 12))
    assert [row.code for row in store.rows_after(6)][:2] == [bytes([13]), bytes([20])]
    assert [row[0] for row in store.slide_rows()] == list(range(1, 12))
    assert store.slide_rows()[4][2:4] == ("patient-a.pt", "a")
    assert store.counts_by("label")["LUAD"] == 4 and store.counts_by("label")["LUSC"] == 2
    assert store.counts_by("dataset")["tcga"] == 6


def test_removed_rows_leave_every_read_and_are_journalled(tmp_path: Path) -> None:
    store = filled(tmp_path)

    assert store.delete([5, 10, 42]) == [5, 10]

    store.close()
    store = MetadataStore(tmp_path / "metadata.sqlite")
    assert store.count_and_id_sum() == (9, sum(range(1, 12)) - 15)
    assert store.record(5) is None and store.record(6) is not None
    assert 5 not in [row.id for row in store.rows_after(0)]
    assert 5 not in [row[0] for row in store.slide_rows()]
    assert store.removals_after(0) == [5, 10]
    assert store.stored_rows("tcga/a.pt") == {0, 2, 3}
    assert store.counts_by("label")["LUAD"] == 3


def test_a_file_s_stored_rows_are_known_by_number(tmp_path: Path) -> None:
    store = filled(tmp_path)

    assert store.stored_rows("tcga/b.pt") == {0, 1}
    assert store.stored_rows("tcga/c.pt") == set()


def test_fine_codes_of_items_and_rows_come_back_in_id_order(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.delete([8])

    ids, codes_after = store.fine_codes_after(2, DIM)

    assert ids.tolist() == [3, 4, 5, 6, 7, 9, 10, 11]
    assert codes_after[:, 0].tolist() == [1, 2, 2, 2, 2, 3, 4, 4]
    assert codes_after.shape == (8, DIM)
