"""The one writer of ingest runs, fed as a source of precomputed feature vectors would feed it:
rows of vectors with their records, no pixels."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from indexer.index.protocol import Index
from indexer.index.records import NewItem
from indexer.index.row_blocks import FeatureRows
from indexer.index.shards import ShardedIndex
from indexer.ingest.writer import (
    IngestWriter,
    PipelineConfig,
    SeenBefore,
    prefetched,
    seen_before,
)
from tests.indexer.index_helpers import descriptors_near_codewords, new_index, unit_codebooks

CONFIG = PipelineConfig(batch_size=4, progress=False)


def feature_rows(slide: str, rows: int) -> list[NewItem]:
    """Records of precomputed vectors: slide id, group, label, row index and coordinates."""
    return [
        NewItem(
            source=f"{slide}.h5",
            archive="features",
            content_hash=f"{slide}:row-{row}",
            label="tumour" if row % 2 else "normal",
            group=slide,
            dataset="features",
            tile=(row * 256, 0, 256, 256),
            extra={"slide_id": slide, "row": row},
        )
        for row in range(rows)
    ]


def ingest(index: Index, bags: dict[str, int], vectors: np.ndarray) -> IngestWriter:
    """Feed every bag (a slide's rows) through the writer, skipping what the journal knows."""
    writer = IngestWriter(index, CONFIG)
    start = 0
    for slide, rows in bags.items():
        key, file_hash = f"features/{slide}.h5", f"hash-of-{slide}"
        records = feature_rows(slide, rows)
        bag = vectors[start : start + rows]
        start += rows
        writer.summary.images += 1
        seen = seen_before(index.journal, (key,), file_hash)
        if seen is not None:
            writer.skipped(key, seen)
            continue
        fresh = writer.begin(key, file_hash, [record.content_hash for record in records])
        kept = [number for number, new in enumerate(fresh) if new]
        writer.write([records[n] for n in kept], bag[kept])
    return writer


def test_precomputed_vectors_are_written_journalled_and_found_in_a_sharded_index(tmp_path):
    bags = {"slide-a": 5, "slide-b": 3, "slide-c": 6}
    with ShardedIndex.create_from_codebooks(
        tmp_path / "sharded", unit_codebooks(), card={}, shard_count=3
    ) as sharded:
        vectors = descriptors_near_codewords(sum(bags.values()), sharded.codebooks)
        summary = ingest(sharded, bags, vectors).close()
        assert (summary.images, summary.tiles_added, summary.tiles_duplicate) == (3, 14, 0)
        assert len(sharded) == 14 and sharded.unsaved_changes == 0  # closing snapshots
        for slide in bags:
            assert sharded.journal.finished_source(f"features/{slide}.h5") == f"hash-of-{slide}"
        (hit, *_) = sharded.search(vectors[6:7], 3)[0]
        assert hit.record is not None and hit.record.extra == {"slide_id": "slide-b", "row": 1}
        again = ingest(sharded, bags, vectors).close()
        assert (again.images_finished_before, again.tiles_added) == (3, 0)


def test_a_source_cut_short_resumes_with_only_its_missing_rows(tmp_path):
    with new_index(tmp_path / "index") as index:
        vectors = descriptors_near_codewords(10, index.codebooks)
        records = feature_rows("slide-a", 10)
        writer = IngestWriter(index, CONFIG)
        writer.begin("features/slide-a.h5", "hash-a", [r.content_hash for r in records])
        writer.write(records[:6], vectors[:6])  # one batch of 4 written, 2 queued; then a crash
        assert len(index) == 4 and index.journal.finished_source("features/slide-a.h5") is None
        resumed = IngestWriter(index, CONFIG)
        fresh = resumed.begin("features/slide-a.h5", "hash-a", [r.content_hash for r in records])
        assert fresh == [False] * 4 + [True] * 6
        resumed.write(records[4:], vectors[4:])
        summary = resumed.close()
        assert (summary.tiles_already_indexed, summary.tiles_added, len(index)) == (4, 6, 10)
        assert index.journal.finished_source("features/slide-a.h5") == "hash-a"


def test_the_same_bytes_under_another_name_are_a_duplicate_source(tmp_path):
    with new_index(tmp_path / "index") as index:
        writer = IngestWriter(index, CONFIG)
        writer.begin("features/a.h5", "same-bytes", [])
        writer.close()
        assert seen_before(index.journal, ("features/a.h5",), "same-bytes") == SeenBefore(None)
        twin = seen_before(index.journal, ("features/copy.h5",), "same-bytes")
        assert twin == SeenBefore("features/a.h5")
        assert seen_before(index.journal, ("features/a.h5",), "other-bytes") is None


def test_read_ahead_keeps_order_bounds_what_is_in_flight_and_waits_when_closed():
    running, most = 0, 0
    lock = threading.Lock()

    def work(number: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return number * 2

    with ThreadPoolExecutor(4) as pool:
        assert list(prefetched(pool, work, range(20), lambda: 3)) == [n * 2 for n in range(20)]
        assert most <= 3
        results = prefetched(pool, work, range(20), lambda: 3)
        assert next(results) == 0
        results.close()
        assert running == 0  # nothing still runs once the iterator is closed


def test_one_config_holds_the_runs_defaults():
    from indexer.ingest.config import IndexConfig
    from indexer.ingest.slides import SlideConfig

    config = IndexConfig(data=Path("a"), index=Path("b"))
    assert config.pipeline() == PipelineConfig()
    assert config.slide_config() == SlideConfig()
    assert SlideConfig().tiling == PipelineConfig().tiling


def slide_block(slide: str, rows: int) -> FeatureRows:
    return FeatureRows(
        source=f"{slide}.h5",
        archive="features",
        dataset="features",
        rows=np.arange(rows, dtype=np.int64),
        slide_ids=[slide] * rows,
        labels=["tumour"] * rows,
        groups=[slide] * rows,
    )


@pytest.mark.parametrize("shards", [None, 3])
def test_a_feature_file_cut_short_resumes_with_only_its_missing_rows(tmp_path, shards):
    if shards is None:
        index: Index = new_index(tmp_path / "index")
    else:
        index = ShardedIndex.create_from_codebooks(
            tmp_path / "sharded", unit_codebooks(), card={}, shard_count=shards
        )
    with index:
        vectors = descriptors_near_codewords(10, index.codebooks)
        block = slide_block("slide-a", 10)
        writer = IngestWriter(index, CONFIG)
        writer.begin_rows("features/slide-a.h5", "hash-a", block.take(np.arange(6)), last=False)
        writer.write_rows([block.take(np.arange(6))], vectors[:6])  # then the run dies
        assert len(index) == 6 and index.journal.finished_source("features/slide-a.h5") is None

        resumed = IngestWriter(index, CONFIG)
        fresh = resumed.begin_rows("features/slide-a.h5", "hash-a", block)
        assert fresh.tolist() == [False] * 6 + [True] * 4
        rest = np.flatnonzero(fresh)
        resumed.write_rows([block.take(rest)], vectors[rest])
        summary = resumed.close()

        assert (summary.tiles_already_indexed, summary.tiles_added, len(index)) == (6, 4, 10)
        assert index.journal.finished_source("features/slide-a.h5") == "hash-a"
        (hit, *_) = index.search(vectors[8:9], 1)[0]
        assert hit.record is not None and hit.record.extra == {"slide_id": "slide-a", "row": 8}
