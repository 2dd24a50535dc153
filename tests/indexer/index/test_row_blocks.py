"""Feature rows as columns: the stored form reads back whole, and a row is the item it would be."""

import numpy as np
import pytest

from indexer.index.row_blocks import (
    FeatureRows,
    RunColumn,
    decode_block,
    encode_block,
    row_key,
)


def slide_rows(coords: bool = True) -> FeatureRows:
    return FeatureRows(
        source="slides/s-1.h5",
        archive="tcga",
        dataset="tcga",
        rows=np.array([0, 1, 3, 4, 5], dtype=np.int64),
        slide_ids=["s-1"] * 5,
        labels=["LUAD", "LUAD", None, None, "LUSC"],
        groups=["p-1"] * 5,
        columns={"site": ["a", "a", "b", "a", "a"]},
        constants={"patch_size": 256, "scanner": "x"},
        coords=np.array([[0, 0], [512, 0], [0, 512], [512, 512], [1024, 0]]) if coords else None,
        tile_size=512 if coords else None,
    )


@pytest.mark.parametrize("coords", [True, False])
def test_a_block_reads_back_as_it_was_stored(coords: bool) -> None:
    block = slide_rows(coords)

    back = decode_block(encode_block(block))

    assert back.rows.tolist() == block.rows.tolist()
    assert (back.slide_ids, back.labels, back.groups) == (
        block.slide_ids,
        block.labels,
        block.groups,
    )
    assert back.columns == block.columns and back.constants == block.constants
    assert (back.coords is None) == (not coords)
    if back.coords is not None and block.coords is not None:
        assert back.coords.tolist() == block.coords.tolist()
    assert [back.extra(n) for n in range(5)] == [block.extra(n) for n in range(5)]


def test_string_columns_are_stored_as_runs() -> None:
    stored = encode_block(slide_rows())

    assert '"label": [["LUAD", 2], [null, 2], ["LUSC", 1]]' in stored.header
    assert '"slide_id": [["s-1", 5]]' in stored.header


def test_a_stored_row_is_the_item_the_same_row_would_be() -> None:
    block = slide_rows()
    item = block.items()[2]

    record = block.record(2, item_id=42, added_at=1.5)

    assert record.content_hash == item.content_hash == row_key("tcga/slides/s-1.h5", 3)
    assert (record.source, record.archive, record.dataset) == (item.source, "tcga", "tcga")
    assert (record.label, record.group) == (item.label, item.group) == (None, "p-1")
    assert record.tile == item.tile == (0, 512, 512, 512)
    assert record.extra == item.extra
    assert record.extra == {
        "patch_size": 256,
        "scanner": "x",
        "site": "b",
        "slide_id": "s-1",
        "row": 3,
        "x": 0,
        "y": 512,
    }
    assert (record.id, record.thumbnail, record.display_source) == (42, None, "tcga/slides/s-1.h5")


def test_taking_rows_keeps_every_column_in_step() -> None:
    taken = slide_rows().take([1, 4])

    assert taken.rows.tolist() == [1, 5]
    assert taken.labels == ["LUAD", "LUSC"] and taken.columns == {"site": ["a", "a"]}
    assert taken.coords is not None and taken.coords.tolist() == [[512, 0], [1024, 0]]


def test_columns_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="5 rows"):
        FeatureRows("a.pt", None, None, np.arange(5), ["s"] * 5, [None] * 4, ["g"] * 5)


def test_a_block_of_an_unknown_format_is_refused() -> None:
    stored = encode_block(slide_rows())
    newer = type(stored)(stored.header.replace('"format": 1', '"format": 2'), stored.rows, None)

    with pytest.raises(ValueError, match="format 2"):
        decode_block(newer)


def test_a_long_stretch_is_cut_into_parts_that_keep_every_row() -> None:
    block = slide_rows()

    parts = block.parts(max_rows=2)

    assert [part.rows.tolist() for part in parts] == [[0, 1], [3, 4], [5]]
    assert [label for part in parts for label in part.labels] == block.labels
    assert [part.extra(0) for part in parts] == [block.extra(0), block.extra(2), block.extra(4)]
    assert block.parts(max_rows=5) == [block]


def test_a_column_read_back_as_runs_answers_like_the_list_it_was() -> None:
    values = ["a", "a", None, "b", "b", "b"]
    column: RunColumn[str | None] = RunColumn([["a", 2], [None, 1], ["b", 3]])

    assert len(column) == 6 and list(column) == values and column == values
    assert [column[n] for n in range(6)] == values and column[-1] == "b"
    assert column[1:4] == values[1:4]
    with pytest.raises(IndexError):
        column[6]
