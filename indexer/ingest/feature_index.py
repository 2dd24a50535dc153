"""Indexing a feature archive: rows a foundation model produced -> the feature model's codes.

The rows come from `indexer.ingest.features.FeatureArchive` (held to the model's input length,
so a file of another dimension is refused by name and the rest indexed), go through the index's
own `model.feature_encoder.FeatureEncoder` and into the one `IngestWriter`, as images and slides
do: a file finished by an earlier run is skipped, the same bytes under another name are a
duplicate file, rows already stored (an interrupted run) are not encoded again, and a file is
journalled finished once its last row is written. Rows travel and are stored as columns, a block
per stretch of a file (`indexer.index.row_blocks`), never as one object or SQLite row each.

Rows of many files share a batch: a file's rows are not encoded, written and committed on their
own, so a folder of small per-slide files costs one forward pass and one commit per batch, not
per file. A file with the same bytes as one read earlier in the same run, written or still
queued, is a duplicate file too.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from indexer.index.protocol import Index
from indexer.index.row_blocks import FeatureRows
from indexer.ingest.features import FeatureArchive, FeatureBatch, RefusedFile, open_npy
from indexer.ingest.sources import SourceError
from indexer.ingest.writer import (
    IndexingSummary,
    IngestWriter,
    PipelineConfig,
    SeenBefore,
    seen_before,
)
from model.feature_encoder import FeatureEncoder

log = logging.getLogger(__name__)

_Outcome = TypeVar("_Outcome")


@dataclass(slots=True)
class FeatureIndexingSummary:
    """Counts of one run over a feature archive (rows, not tiles)."""

    files: int
    counts: IndexingSummary

    @property
    def rows_per_second(self) -> float:
        written = self.counts.tiles_added + self.counts.tiles_duplicate
        return written / self.counts.seconds if self.counts.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        counts = self.counts
        return [
            f"files in the archive:     {self.files}",
            f"finished in earlier runs: {counts.images_finished_before}",
            f"duplicate files:          {counts.duplicate_files}",
            f"refused files or rows:    {len(counts.unreadable)}",
            f"rows added:               {counts.tiles_added}",
            f"rows already indexed:     {counts.tiles_already_indexed}",
            f"duplicate rows:           {counts.tiles_duplicate}",
            f"seconds:                  {counts.seconds:.1f} ({self.rows_per_second:,.0f} rows/s)",
        ]


def index_feature_archive(
    archive: FeatureArchive,
    index: Index,
    encoder: FeatureEncoder,
    config: PipelineConfig,
) -> FeatureIndexingSummary:
    """Encode every row of ``archive`` not yet in ``index`` and add it; see the module doc."""
    writer = IngestWriter(index, config)
    queue = _RowQueue(writer, encoder, config.batch_size)
    skipping: str | None = None  # a duplicate file whose remaining batches are passed over
    started: set[str] = set()  # sources of the files read in this run
    read_as: dict[str, str] = {}  # fingerprint -> the first source read with it in this run
    bar = _row_bar(archive, config.progress)
    try:
        for outcome in read_ahead(archive.batches(finished=index.journal.finished_source)):
            if isinstance(outcome, RefusedFile):
                writer.summary.unreadable.append((outcome.file.source, outcome.error.problem))
                log.warning("refused %s", outcome.error)
                continue
            source = outcome.file.source
            if source == skipping:
                continue
            if source not in started:
                started.add(source)
                twin = read_as.setdefault(outcome.fingerprint, source)
                seen = (
                    SeenBefore(twin)
                    if twin != source
                    else seen_before(index.journal, [outcome.journal_key], outcome.fingerprint)
                )
                if seen is not None:
                    writer.skipped(source, seen)
                    skipping = source
                    continue
            _queue_batch(writer, queue, outcome)
            if bar is not None:
                bar.update(len(outcome.rows))
        queue.write()
        counts = writer.close()
    finally:
        if bar is not None:
            bar.close()
    finished_before = len(archive.files) - len(started) - _refused_whole(counts, started)
    counts.images_finished_before += max(0, finished_before)
    counts.images = len(archive.files)
    return FeatureIndexingSummary(len(archive.files), counts)


def read_ahead(outcomes: Iterator[_Outcome], depth: int = 2) -> Generator[_Outcome, None, None]:
    """``outcomes`` produced by a thread of their own, at most ``depth`` ahead of the consumer:
    reading the next file (hashing, float conversion, checks) overlaps encoding and writing the
    last one, which release the GIL for most of their time. An error of the reader is raised
    here; a consumer that stops early stops the reader."""
    ready: queue.Queue[tuple[_Outcome | None, BaseException | None, bool]] = queue.Queue(depth)
    stop = threading.Event()

    def hand_over(entry: tuple[_Outcome | None, BaseException | None, bool]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for outcome in outcomes:
                if not hand_over((outcome, None, False)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            hand_over((None, error, True))
            return
        hand_over((None, None, True))

    reader = threading.Thread(target=produce, name="feature-reader", daemon=True)
    reader.start()
    try:
        while True:
            outcome, error, done = ready.get()
            if error is not None:
                raise error
            if done:
                return
            yield cast(_Outcome, outcome)
    finally:
        stop.set()
        reader.join()


class _RowQueue:
    """Rows of begun files waiting to be encoded and written together, a batch at a time: on
    500 per-slide files of 18 rows, one forward pass per file took 16% of the run's CPU time."""

    def __init__(self, writer: IngestWriter, encoder: FeatureEncoder, batch_size: int) -> None:
        self._writer, self._encoder, self._batch_size = writer, encoder, batch_size
        self._blocks: list[FeatureRows] = []
        self._vectors: list[npt.NDArray[np.float32]] = []
        self._rows = 0

    def add(self, block: FeatureRows, vectors: npt.NDArray[np.float32]) -> None:
        self._blocks.append(block)
        self._vectors.append(vectors)
        self._rows += len(block)
        if self._rows >= self._batch_size:
            self.write()

    def write(self) -> None:
        """Encode and hand to the writer every queued row."""
        if not self._blocks:
            return
        vectors = self._vectors[0] if len(self._vectors) == 1 else np.concatenate(self._vectors)
        # An index with a second stage keeps an 8-bit code of each centred row to re-rank by.
        stage = self._writer.index.second_stage
        fine = self._encoder.centred(vectors) if stage is not None else None
        self._writer.write_rows(self._blocks, self._encoder.descriptors(vectors), fine)
        self._blocks, self._vectors, self._rows = [], [], 0


def _queue_batch(writer: IngestWriter, queue: _RowQueue, batch: FeatureBatch) -> None:
    fresh = writer.begin_rows(batch.journal_key, batch.fingerprint, batch.rows, last=batch.last)
    if fresh.all():
        queue.add(batch.rows, batch.vectors)
    elif fresh.any():
        rows = np.flatnonzero(fresh)
        queue.add(batch.rows.take(rows), batch.vectors[rows])


def _refused_whole(counts: IndexingSummary, started: set[str]) -> int:
    """Files refused before any of their rows was read (not finished before, not started)."""
    return len({source for source, _ in counts.unreadable} - started)


def _row_bar(archive: FeatureArchive, show: bool) -> Any:
    """A progress bar of rows: the total is known up front for an ``npy`` matrix."""
    if not show:
        return None
    from tqdm import tqdm

    total = None
    if archive.layout == "npy":
        try:
            total = sum(len(open_npy(file)) for file in archive.files)
        except SourceError:
            total = None
    return tqdm(total=total, unit="row", desc="feature rows", smoothing=0.1)
