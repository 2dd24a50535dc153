import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.index.pq import adc_scores, assign_codes, lookup_tables
from indexer.index.row_blocks import MAX_BLOCK_ROWS, FeatureRows
from indexer.index.store import ArchiveIndex, Hit, IndexDirectoryError, SearchFilters
from tests.indexer.index_helpers import (
    descriptors_near_codewords,
    items,
    new_index,
    unit_codebooks,
)


def exact_top_k(
    index: ArchiveIndex, queries: np.ndarray, k: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ADC over every stored code: the reference the index must reproduce."""
    codes = assign_codes(descriptors_near_codewords(2000, index.codebooks), index.codebooks)
    scores = adc_scores(lookup_tables(queries, index.codebooks), codes)
    ids = np.arange(1, len(codes) + 1)
    if keep is not None:
        scores = np.where(keep[None, :], scores, -np.inf)
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture
def filled(tmp_path):
    index = new_index(tmp_path / "index")
    index.add(descriptors_near_codewords(2000, index.codebooks), items(2000))
    yield index
    index.close()


def as_arrays(results: list[list[Hit]]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([[hit.score for hit in hits] for hits in results]),
        np.array([[hit.id for hit in hits] for hits in results]),
    )


def test_search_reproduces_exact_adc_on_seeded_vectors(filled):
    queries = descriptors_near_codewords(40, filled.codebooks, seed=5)
    scores, ids = as_arrays(filled.search(queries, 10))
    expected_scores, expected_ids = exact_top_k(filled, queries, 10)
    assert np.array_equal(ids, expected_ids)
    assert np.allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("filters", "wanted"),
    [
        # Few eligible items: answered by an exact scan of them.
        (
            SearchFilters(label="class-1", exclude_group="patient-4"),
            lambda label, group, _: (label == 1) & (group != 4),
        ),
        # Most items eligible: FastScan shortlist, masked and grown until k survive.
        (SearchFilters(exclude_group="patient-4"), lambda _, group, __: group != 4),
        (SearchFilters(dataset="synthetic"), lambda _, __, dataset: dataset == 1),
    ],
)
def test_filtered_search_matches_exact_search_and_returns_k_hits(
    filled: ArchiveIndex, filters: SearchFilters, wanted: Callable[..., np.ndarray]
) -> None:
    queries = descriptors_near_codewords(10, filled.codebooks, seed=6)
    numbers = np.arange(2000)
    keep = wanted(numbers % 3, numbers % 7, numbers % 2)
    results = filled.search(queries, 25, filters)
    scores, ids = as_arrays(results)
    expected_scores, expected_ids = exact_top_k(filled, queries, 25, keep)
    assert ids.shape == (10, 25)
    assert np.array_equal(ids, expected_ids)
    assert np.allclose(scores, expected_scores, atol=1e-5)
    records = [hit.record for hits in results for hit in hits]
    assert all(record is not None and keep[record.id - 1] for record in records)


def test_unknown_filter_value_returns_no_hits(filled):
    queries = descriptors_near_codewords(2, filled.codebooks)
    assert filled.search(queries, 5, SearchFilters(dataset="nowhere")) == [[], []]


def test_round_trip_gives_identical_results(tmp_path, filled):
    queries = descriptors_near_codewords(10, filled.codebooks, seed=7)
    before = filled.search(queries, 15, SearchFilters(dataset="synthetic"))
    filled.close()
    with ArchiveIndex.open(tmp_path / "index") as reopened:
        assert len(reopened) == 2000
        assert reopened.search(queries, 15, SearchFilters(dataset="synthetic")) == before
        record = reopened.get(before[0][0].id)
        assert record is not None and record.thumbnail == b"\xff\xd8jpeg"
        assert record.extra == {"n": record.id - 1} and record.tile is not None


def test_added_item_is_found_first_and_delete_removes_it(tmp_path, filled):
    probe = descriptors_near_codewords(1, filled.codebooks, seed=11, noise=0.0)
    (outcome,) = filled.add(probe, items(1, start=5000))
    assert outcome.added
    assert filled.search(probe, 1)[0][0].id == outcome.id
    assert filled.remove([outcome.id, 10**9]) == 1
    assert outcome.id not in {hit.id for hit in filled.search(probe, 50)[0]}
    assert filled.get(outcome.id) is None
    filled.close()
    with ArchiveIndex.open(tmp_path / "index") as reopened:
        assert outcome.id not in {hit.id for hit in reopened.search(probe, 50)[0]}


def test_duplicates_are_reported_not_added(filled):
    vectors = descriptors_near_codewords(2, filled.codebooks, seed=3)
    twice = [*items(1, start=0), *items(1, start=0)]
    outcomes = filled.add(vectors, twice)
    assert [outcome.duplicate_of for outcome in outcomes] == [1, 1]
    assert len(filled) == 2000


def test_unflushed_adds_and_removes_are_replayed_after_a_crash(tmp_path):
    index = new_index(tmp_path / "index")
    vectors = descriptors_near_codewords(300, index.codebooks)
    index.add(vectors[:200], items(200))
    index.flush()
    index.add(vectors[200:], items(100, start=200))
    index.remove([3, 250])
    expected = index.search(vectors[:5], 8)
    index._metadata.close()  # the process dies: no flush, no close
    with ArchiveIndex.open(tmp_path / "index") as reopened:
        assert len(reopened) == 298
        assert reopened.stats().unsaved_changes > 0
        assert reopened.search(vectors[:5], 8) == expected


def test_removal_of_every_item_leaves_a_working_empty_index(tmp_path):
    with new_index(tmp_path / "index") as index:
        vectors = descriptors_near_codewords(10, index.codebooks)
        index.add(vectors, items(10))
        assert index.remove(list(range(1, 11))) == 10
        assert index.search(vectors[:2], 3) == [[], []]
    with ArchiveIndex.open(tmp_path / "index") as reopened:
        assert len(reopened) == 0


def test_codebooks_with_256_codewords_use_the_flat_pq_path(tmp_path):
    with new_index(tmp_path / "index", codebook_size=256) as index:
        vectors = descriptors_near_codewords(500, index.codebooks)
        index.add(vectors, items(500))
        hits = index.search(vectors[:3], 5)
        tables = lookup_tables(vectors[:3], index.codebooks)
        exact = adc_scores(tables, assign_codes(vectors, index.codebooks))
        assert np.allclose([h.score for h in hits[0]], np.sort(exact[0])[::-1][:5], atol=1e-5)


def test_concurrent_searches_while_adding_and_removing(tmp_path):
    index = new_index(tmp_path / "index")
    vectors = descriptors_near_codewords(1200, index.codebooks)
    index.add(vectors[:400], items(400))
    errors: list[BaseException] = []

    def search_repeatedly():
        try:
            for _ in range(30):
                for hits in index.search(vectors[:4], 10):
                    assert len(hits) == 10
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=search_repeatedly) for _ in range(4)]
    for thread in threads:
        thread.start()
    for start in range(400, 1200, 100):
        index.add(vectors[start : start + 100], items(100, start=start))
        index.remove([start - 5])
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == 1200 - 8
    index.close()


# ---- damaged snapshots are rebuilt from SQLite; what SQLite cannot vouch for is refused ----------


@pytest.fixture
def saved(tmp_path):
    index = new_index(tmp_path / "index")
    index.add(descriptors_near_codewords(100, index.codebooks), items(100))
    index.close()
    return tmp_path / "index"


def committed(directory: Path) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads((directory / "manifest.json").read_text())["snapshot"]
    return snapshot


def codes_file(directory: Path) -> Path:
    return directory / f"codes.{committed(directory)['generation']}.faiss"


def columns_file(directory: Path) -> Path:
    return directory / f"columns.{committed(directory)['generation']}.npz"


def reopens_with_every_item(directory, expected_ids, caplog, reason: str) -> None:
    """Opening rebuilds from SQLite with a warning naming ``reason``, and loses nothing."""
    vectors = descriptors_near_codewords(100, unit_codebooks(0))
    with caplog.at_level("WARNING", logger="indexer.index.store"):
        index = ArchiveIndex.open(directory)
    with index:
        assert re.search(reason, caplog.text), caplog.text
        assert "rebuilding the codes from metadata.sqlite" in caplog.text
        assert index.opened_from.startswith("rebuilt from metadata.sqlite")
        assert len(index) == len(expected_ids)
        found = {hit.id for hits in index.search(vectors, 1) for hit in hits}
        assert found <= set(expected_ids)
        assert {hit.id for hit in index.search(vectors[:1], 200)[0]} == set(expected_ids)
    # The rebuilt snapshot was written on close: the next open loads it without a warning.
    caplog.clear()
    with ArchiveIndex.open(directory) as again:
        assert again.opened_from.startswith("snapshot generation")
        assert len(again) == len(expected_ids)
    assert "rebuilding" not in caplog.text


def test_missing_manifest_is_refused_naming_the_repair_command(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(IndexDirectoryError, match=re.escape("no manifest.json")) as refused:
        ArchiveIndex.open(saved)
    assert f"histosearch repair --index {saved}" in str(refused.value)


def test_damaged_faiss_snapshot_is_rebuilt_from_sqlite(saved, caplog):
    data = bytearray(codes_file(saved).read_bytes())
    data[-3] ^= 0xFF
    codes_file(saved).write_bytes(bytes(data))
    reopens_with_every_item(
        saved, range(1, 101), caplog, r"codes\.\d+\.faiss does not match the checksum"
    )


def test_truncated_columns_are_rebuilt_from_sqlite(saved, caplog):
    columns_file(saved).write_bytes(columns_file(saved).read_bytes()[:-10])
    reopens_with_every_item(saved, range(1, 101), caplog, r"columns\.\d+\.npz has \d+ bytes")


def test_missing_snapshot_file_is_rebuilt_from_sqlite(saved, caplog):
    codes_file(saved).unlink()
    reopens_with_every_item(
        saved, range(1, 101), caplog, r"codes\.\d+\.faiss, named by manifest.json, is missing"
    )


def test_metadata_of_an_index_with_other_codebooks_is_refused(tmp_path, saved):
    other = new_index(tmp_path / "other", seed=42)
    other.close()
    shutil.copyfile(tmp_path / "other" / "metadata.sqlite", saved / "metadata.sqlite")
    with pytest.raises(
        IndexDirectoryError, match=re.escape("codebook fingerprint of metadata.sqlite")
    ) as refused:
        ArchiveIndex.open(saved)
    assert "histosearch repair" in str(refused.value)


def test_snapshot_of_other_items_than_sqlite_holds_is_rebuilt(tmp_path, saved, caplog):
    other = new_index(tmp_path / "other")
    other.add(descriptors_near_codewords(30, other.codebooks), items(30))
    other.close()
    shutil.copyfile(tmp_path / "other" / "metadata.sqlite", saved / "metadata.sqlite")
    reopens_with_every_item(saved, range(1, 31), caplog, "past the last id metadata.sqlite gave")


def test_rows_deleted_behind_the_index_are_followed(saved, caplog):
    with sqlite3.connect(saved / "metadata.sqlite") as connection:
        connection.execute("DELETE FROM items WHERE id = 5")
    expected = [i for i in range(1, 101) if i != 5]
    reopens_with_every_item(saved, expected, caplog, "holds 99 items")


def test_a_snapshot_with_the_same_count_but_other_ids_is_rebuilt(saved, caplog):
    with ArchiveIndex.open(saved) as index:
        index.remove([50])
    with sqlite3.connect(saved / "metadata.sqlite") as connection:
        connection.execute("UPDATE items SET id = 50 WHERE id = 49")
    expected = [i for i in range(1, 101) if i != 49]
    reopens_with_every_item(saved, expected, caplog, "holds 99 items .* with other ids")


def test_edited_model_card_is_refused(saved):
    card = json.loads((saved / "model_card.json").read_text())
    card["codebook_size"] = 256
    (saved / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(
        IndexDirectoryError, match=re.escape("model_card.json is not the model card")
    ) as refused:
        ArchiveIndex.open(saved)
    assert "histosearch repair" in str(refused.value)


def test_unreadable_metadata_is_refused_naming_the_repair_command(saved):
    (saved / "metadata.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(IndexDirectoryError, match="not a readable SQLite database") as refused:
        ArchiveIndex.open(saved)
    assert "histosearch repair" in str(refused.value)


def test_a_manifest_that_fails_validation_is_refused(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["code_size"] = 5
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDirectoryError, match="code_size 5 does not fit M=8 K=16"):
        ArchiveIndex.open(saved)


def test_creating_over_an_existing_index_is_refused(saved):
    with pytest.raises(IndexDirectoryError, match="already holds an index"):
        new_index(saved)


def test_other_codebooks_fail_the_model_check(saved):
    with ArchiveIndex.open(saved) as index:
        index.check_model(unit_codebooks(0))
        with pytest.raises(IndexDirectoryError, match="codebooks differ"):
            index.check_model(unit_codebooks(1))


def test_descriptors_of_the_wrong_width_are_rejected(saved):
    with ArchiveIndex.open(saved) as index, pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, 64), dtype=np.float32), 3)


def test_a_database_damaged_past_its_header_is_refused_naming_the_repair_command(saved):
    path = saved / "metadata.sqlite"
    data = bytearray(path.read_bytes())
    data[4096:] = b"\x07" * (len(data) - 4096)  # every page after the first
    path.write_bytes(bytes(data))
    with pytest.raises(IndexDirectoryError, match=re.escape("metadata.sqlite")) as refused:
        ArchiveIndex.open(saved)
    assert "histosearch repair" in str(refused.value)


def feature_blocks(count: int, per_file: int) -> list[FeatureRows]:
    return [
        FeatureRows(
            source=f"slide-{start // per_file}.h5",
            archive="features",
            dataset="features",
            rows=np.arange(min(per_file, count - start), dtype=np.int64),
            slide_ids=[f"slide-{start // per_file}"] * min(per_file, count - start),
            labels=[f"class-{start // per_file % 3}"] * min(per_file, count - start),
            groups=[f"patient-{start // per_file % 7}"] * min(per_file, count - start),
        )
        for start in range(0, count, per_file)
    ]


def test_feature_rows_stored_as_blocks_search_and_read_as_items_would(tmp_path):
    blocks = feature_blocks(600, per_file=45)
    as_items = [item for block in blocks for item in block.items()]
    with new_index(tmp_path / "rows") as by_rows, new_index(tmp_path / "items") as by_items:
        vectors = descriptors_near_codewords(600, by_rows.codebooks)
        ids = by_rows.add_rows(vectors, blocks)
        by_items.add(vectors, as_items)
        assert np.concatenate(ids).tolist() == list(range(1, 601))

        filters = SearchFilters(label="class-1", exclude_group="patient-2")
        for chosen in (None, filters):
            found = by_rows.search(vectors[:6], 9, chosen)
            expected = by_items.search(vectors[:6], 9, chosen)
            assert [[(h.id, h.score) for h in hits] for hits in found] == [
                [(h.id, h.score) for h in hits] for hits in expected
            ]
            for hits_rows, hits_items in zip(found, expected, strict=True):
                for a, b in zip(hits_rows, hits_items, strict=True):
                    assert a.record is not None and b.record is not None
                    assert replace(a.record, added_at=0) == replace(b.record, added_at=0)
        assert by_rows.stats().labels == by_items.stats().labels
        assert by_rows.slide_rows() == by_items.slide_rows()


def test_unflushed_feature_rows_and_their_removal_are_replayed_after_a_crash(tmp_path):
    index = new_index(tmp_path / "index")
    vectors = descriptors_near_codewords(300, index.codebooks)
    blocks = feature_blocks(300, per_file=40)
    index.add_rows(vectors[:200], blocks[:5])
    index.flush()
    index.add_rows(vectors[200:], blocks[5:])
    index.remove([3, 250])
    expected = index.search(vectors[:5], 8)
    index._metadata.close()  # the process dies: no flush, no close
    with ArchiveIndex.open(tmp_path / "index") as reopened:
        assert len(reopened) == 298
        assert reopened.search(vectors[:5], 8) == expected
        # Ids 3 and 250 were rows 2 of slide-0 and 9 of slide-6: a resumed run writes them again.
        assert np.flatnonzero(~reopened.stored_rows(blocks[0])).tolist() == [2]
        assert np.flatnonzero(~reopened.stored_rows(blocks[6])).tolist() == [9]
        assert reopened.stored_rows(blocks[7]).all()


def test_a_long_stretch_of_rows_is_stored_in_bounded_blocks(tmp_path):
    with new_index(tmp_path / "index") as index:
        (block,) = feature_blocks(2 * MAX_BLOCK_ROWS + 5, per_file=2 * MAX_BLOCK_ROWS + 5)
        vectors = descriptors_near_codewords(len(block), index.codebooks)
        (ids,) = index.add_rows(vectors, [block])
        assert ids.tolist() == list(range(1, len(block) + 1))
        record = index.get(MAX_BLOCK_ROWS + 1)
        assert record is not None and record.extra["row"] == MAX_BLOCK_ROWS
    with sqlite3.connect(tmp_path / "index" / "metadata.sqlite") as database:
        sizes = database.execute("SELECT last_id - first_id + 1 FROM row_blocks ORDER BY first_id")
        assert [size for (size,) in sizes] == [MAX_BLOCK_ROWS, MAX_BLOCK_ROWS, 5]
