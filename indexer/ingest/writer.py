"""The one writing end of every ingest run: resume and duplicate checks, batches, journal, flush.

Every source of items feeds the same `IngestWriter`: archive images (`indexer.ingest.pipeline`),
whole-slide images (`indexer.ingest.slides`), images encoded on a Ray cluster
(`indexer.ingest.distributed`), and any source whose descriptors are already computed (rows of
feature vectors with their records): what differs between them is only how vectors are made.

For each source (a file, a slide, a bag of precomputed vectors):

1. `seen_before` asks the index's journal whether the same bytes were finished by an earlier
   run, under this name (nothing to do) or another one (a duplicate file);
2. `IngestWriter.begin` registers the source's items by content hash and says which are not
   stored yet (a half-written source resumes after what it stored);
3. `IngestWriter.write` takes the new items with their descriptors, writes full batches (each
   add durable when it returns), and journals a source finished in the same SQLite file once all
   of its items are written, so a resumed run skips it;
4. `IngestWriter.close` writes what is left, journals, snapshots the index and returns the
   summary of the run.

The defaults of every run (`PipelineConfig`) are declared here, once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from indexer.index.metadata import FinishedSource
from indexer.index.protocol import Index, SourceJournal
from indexer.index.records import NewItem
from indexer.index.row_blocks import FeatureRows
from indexer.index.tiling import TilingConfig
from indexer.ingest.archive_root import journal_key

log = logging.getLogger(__name__)

# Items per forward pass and per write: the one default of `histosearch index` and every runner.
DEFAULT_BATCH_SIZE = 64
# Threads reading and decoding (or reading slide regions).
DEFAULT_WORKERS = 2
# Items written between two snapshots of the codes (SQLite holds every item meanwhile).
DEFAULT_FLUSH_EVERY = 50_000

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """How a run cuts images, batches items and how many threads it reads with."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = DEFAULT_WORKERS
    flush_every: int = DEFAULT_FLUSH_EVERY
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")


@dataclass(slots=True)
class IndexingSummary:
    """Counts of one run; ``unreadable`` lists (path, reason)."""

    images: int = 0
    images_finished_before: int = 0
    duplicate_files: int = 0
    tiles_added: int = 0
    tiles_already_indexed: int = 0
    tiles_duplicate: int = 0
    tiles_background: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"images seen:             {self.images}",
            f"finished in earlier runs: {self.images_finished_before}",
            f"duplicate files:         {self.duplicate_files}",
            f"unreadable images:       {len(self.unreadable)}",
            f"tiles added:             {self.tiles_added}",
            f"tiles already indexed:   {self.tiles_already_indexed}",
            f"duplicate tiles:         {self.tiles_duplicate}",
            f"background tiles:        {self.tiles_background}",
            f"seconds:                 {self.seconds:.1f}",
        ]


class SeenBefore(NamedTuple):
    """An earlier run finished these bytes: under this very source (``twin`` None) or another."""

    twin: str | None


def seen_before(journal: SourceJournal, names: Sequence[str], file_hash: str) -> SeenBefore | None:
    """Whether a source (under any of its journal ``names``) needs no work: finished with these
    bytes, or the same bytes finished under another source. Safe to call from worker threads."""
    if file_hash in (journal.finished_source(name) for name in names):
        return SeenBefore(None)
    twin = journal.source_with_hash(file_hash)
    if twin is not None and twin not in names:
        return SeenBefore(twin)
    return None


class IngestWriter:
    """Writes the items of many sources into an index in batches; see the module doc.

    Not thread-safe: one thread at a time calls it (a runner may write from another thread than
    it begins sources from, as long as the two never overlap).
    """

    def __init__(
        self, index: Index, config: PipelineConfig, summary: IndexingSummary | None = None
    ) -> None:
        self.index = index
        self.summary = summary or IndexingSummary()
        self._batch_size = config.batch_size
        self._flush_every = config.flush_every
        self._items: list[NewItem] = []
        self._vectors: list[npt.NDArray[np.float32]] = []
        # The second stage's vectors of the queued items, when the index has one.
        self._fine: list[npt.NDArray[np.float32]] = []
        self._waiting: dict[str, int] = {}
        self._finishing: dict[str, FinishedSource] = {}
        self._open_parts: dict[str, bool] = {}  # sources begun in parts, final part still to come
        self._since_flush = 0
        self._started = time.perf_counter()

    # ---- sources -------------------------------------------------------------------------------

    def skipped(self, source: str, seen: SeenBefore) -> None:
        """Count a source that needs no work (see `seen_before`)."""
        if seen.twin is None:
            self.summary.images_finished_before += 1
        else:
            self.summary.duplicate_files += 1
            log.info("%s has the same bytes as %s: skipped", source, seen.twin)

    def unreadable(self, path: str, reason: str) -> None:
        """Count a source that could not be read; the run goes on."""
        self.summary.unreadable.append((path, reason))
        log.warning("skipping unreadable image %s: %s", path, reason)

    def begin(
        self,
        source: str,
        file_hash: str,
        hashes: Sequence[str],
        background: int = 0,
        *,
        last: bool = True,
    ) -> list[bool]:
        """Register a source (its journal key, its file hash, the content hashes of the items
        it keeps, how many it left out as background); per item, whether it still needs writing.

        The source is journalled finished once every item that needs writing is written. A
        source read in parts (the rows of a large feature matrix, chunk by chunk) is begun once
        per part with ``last`` False on all but its final part: until that one is begun, the
        source is held open, so a run stopped between parts resumes it instead of skipping it.
        """
        stored = self.index.known_hashes(list(hashes))
        fresh = [content_hash not in stored for content_hash in hashes]
        self._register(source, file_hash, len(hashes), sum(fresh), background, last)
        return fresh

    def begin_rows(
        self, source: str, file_hash: str, block: FeatureRows, *, last: bool = True
    ) -> npt.NDArray[np.bool_]:
        """`begin` for a stretch of a feature file's rows (written with `write_rows`): per row,
        whether it still needs writing. The index knows a file's stored rows by their numbers
        (`indexer.index.row_blocks`), not by content."""
        fresh = ~self.index.stored_rows(block)
        self._register(source, file_hash, len(block), int(fresh.sum()), 0, last)
        return fresh

    def _register(
        self, source: str, file_hash: str, items: int, fresh: int, background: int, last: bool
    ) -> None:
        self.summary.tiles_background += background
        self.summary.tiles_already_indexed += items - fresh
        earlier = self._finishing.get(source) if source in self._open_parts else None
        hold = (0 if last else 1) - (1 if self._open_parts.pop(source, False) else 0)
        if not last:
            self._open_parts[source] = True
        self._waiting[source] = self._waiting.get(source, 0) + fresh + hold
        skipped = background
        if earlier is not None:
            items, skipped = items + earlier.items, skipped + earlier.skipped
        self._finishing[source] = FinishedSource(source, file_hash, items, skipped)
        # Sources that need no writing are journalled in batches, not one commit each.
        if sum(count == 0 for count in self._waiting.values()) >= self._batch_size:
            self._journal_finished()

    # ---- items ---------------------------------------------------------------------------------

    def write(
        self,
        items: Sequence[NewItem],
        vectors: npt.NDArray[np.float32],
        fine: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Queue items of begun sources with their (N, D) descriptors (and, for an index with a
        second stage, the vectors it re-ranks by); full batches are written."""
        if len(items) != len(vectors) or (fine is not None and len(fine) != len(items)):
            raise ValueError(f"{len(items)} items but {len(vectors)} descriptors")
        self._items.extend(items)
        self._vectors.extend(np.asarray(vectors, dtype=np.float32))
        if fine is not None:
            self._fine.extend(np.asarray(fine, dtype=np.float32))
        while len(self._items) >= self._batch_size:
            self._write_batch(self._batch_size)

    def write_rows(
        self,
        blocks: Sequence[FeatureRows],
        descriptors: npt.NDArray[np.float32],
        fine: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Write rows of begun feature files now, a block per file stretch, in one transaction
        (the caller batches them), with their descriptors and, for an index with a second
        stage, the vectors it re-ranks by; journal the files this finishes."""
        ids = self.index.add_rows(descriptors, blocks, fine=fine)
        added = sum(len(block_ids) for block_ids in ids)
        self.summary.tiles_added += added
        self.summary.tiles_duplicate += sum(len(block) for block in blocks) - added
        for block in blocks:
            self._waiting[block.journal_key] -= len(block)
        self._journal_finished()
        self._count_toward_flush(added)

    def write_queued(self) -> None:
        """Write what is queued now, short batch included, and journal the finished sources: a
        runner that finishes sources one by one (a slide, a large bag of vectors) calls this
        after each, so the next one already finds it journalled (a copy is then a duplicate)."""
        while self._items:
            self._write_batch(self._batch_size)
        self._journal_finished()

    def close(self) -> IndexingSummary:
        """Write what is queued, journal, snapshot the index; the summary of the run."""
        self.write_queued()
        self.index.flush()
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary

    def _write_batch(self, size: int) -> None:
        items, self._items = self._items[:size], self._items[size:]
        vectors, self._vectors = self._vectors[:size], self._vectors[size:]
        fine, self._fine = self._fine[:size], self._fine[size:]
        outcomes = self.index.add(np.stack(vectors), items, fine=np.stack(fine) if fine else None)
        added = sum(outcome.added for outcome in outcomes)
        self.summary.tiles_added += added
        self.summary.tiles_duplicate += len(items) - added
        for item in items:
            self._waiting[journal_key(item.archive, item.source)] -= 1
        # One journal commit per written batch, not per source.
        self._journal_finished()
        self._count_toward_flush(added)

    def _count_toward_flush(self, added: int) -> None:
        self._since_flush += added
        if self._since_flush >= self._flush_every:
            self.index.flush()
            self._since_flush = 0

    def _journal_finished(self) -> None:
        done = [source for source, count in self._waiting.items() if count == 0]
        for source in done:
            del self._waiting[source]
        self.index.journal.mark_sources_finished([self._finishing.pop(s) for s in done])


# ---- reading ahead -------------------------------------------------------------------------------


def prefetched(
    pool: Executor,
    work: Callable[[_Item], _Result],
    items: Iterable[_Item],
    ahead: Callable[[], int],
) -> Generator[_Result, None, None]:
    """``work`` of each item in order, at most ``ahead()`` items in flight in ``pool``.

    ``ahead`` is asked again before each submission, so a consumer may widen or narrow the
    window as it learns what items cost. Closing the iterator cancels what has not started and
    waits for what has (a slide must not be closed under a running read). An error raised by
    ``work`` is raised here again, and stops the run.
    """
    queue = iter(items)
    in_flight: deque[Future[_Result]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < ahead():
                try:
                    item = next(queue)
                except StopIteration:
                    exhausted = True
                    break
                in_flight.append(pool.submit(work, item))
            if not in_flight:
                return
            yield in_flight.popleft().result()
    finally:
        for future in in_flight:
            future.cancel()
        wait(in_flight)


def progress(
    items: Iterable[_Item], total: int, show: bool, description: str, unit: str
) -> Iterable[_Item]:
    """``items`` with a progress bar when ``show``."""
    if not show:
        return items
    from tqdm import tqdm

    bar: Iterable[_Item] = tqdm(items, total=total, unit=unit, desc=description, position=0)
    return bar


def tile_bar(total: int, show: bool, description: str) -> Any:
    """A second bar under `progress`'s, for the tiles of one large source (None when hidden)."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", desc=description, position=1, leave=False)
