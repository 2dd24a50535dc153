"""What "an index" answers, declared once: `Index`, and the `SourceJournal` of an ingest run.

`ArchiveIndex` (one directory) and `ShardedIndex` (shards searched as one, `indexer.index.shards`)
both implement `Index`; every program that searches, grows or reports on an index (`histosearch
index`, `search`, `delete`, `stats`, the ingest runners, `indexer.index.opening`) is typed against
it, so either kind goes wherever an index is wanted. A shard, local or in another process, is an
`IndexParts` plus the calls a sharded search makes of it (`indexer.index.shards.Shard`).

The resume journal of ingest runs (which sources are finished, with which file hash) is one
object, ``index.journal``: the SQLite store of one index, or the journals of its shards routed by
source. ``known_hashes`` is not part of it: it looks items up by content, which the service's
uploads need as much as a resumed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np
import numpy.typing as npt

from indexer.index.metadata import FinishedSource
from indexer.index.pq import FloatArray, IdArray
from indexer.index.records import ItemRecord, NewItem
from indexer.index.row_blocks import FeatureRows

if TYPE_CHECKING:
    from indexer.index.manifest import SecondStageRecord
    from indexer.index.store import AddOutcome, Hit, IndexStats, SearchFilters

__all__ = ["Index", "IndexParts", "SourceJournal"]


class SourceJournal(Protocol):
    """Which sources an ingest run finished: what a resumed run skips, and files seen before."""

    def finished_source(self, source: str) -> str | None:
        """The file hash recorded when every tile of ``source`` was indexed, or None."""
        ...

    def source_with_hash(self, file_hash: str) -> str | None:
        """A finished source whose file had this hash (a duplicate file elsewhere), or None."""
        ...

    def mark_sources_finished(self, finished: Sequence[FinishedSource]) -> None:
        """Journal that every tile of these sources is stored (one commit per journal)."""
        ...


class IndexParts(Protocol):
    """What every index and every shard of one answers."""

    codebooks: FloatArray
    descriptor_dim: int

    @property
    def journal(self) -> SourceJournal:
        """The finished-source journal of ingest runs (see the module doc)."""
        ...

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """Ids of stored items with these content hashes."""
        ...

    def remove(self, item_ids: Sequence[int]) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""
        ...

    def flush(self) -> None:
        """Write the snapshot of the codes (durability does not wait for it)."""
        ...

    def close(self) -> None:
        """Flush pending changes and release the files."""
        ...

    def get(self, item_id: int) -> ItemRecord | None: ...

    def thumbnail(self, item_id: int) -> bytes | None: ...

    def scores_of(
        self, query: npt.NDArray[np.floating], item_ids: Sequence[int]
    ) -> list[float | None]:
        """Exact ADC scores of one query against these items (None for an absent item)."""
        ...

    def check_model(self, codebooks: npt.NDArray[np.floating]) -> None:
        """Raise IndexDirectoryError unless ``codebooks`` are exactly the ones the codes use."""
        ...

    @property
    def card(self) -> dict[str, Any]: ...

    @property
    def checkpoint_path(self) -> Path | None: ...

    def __len__(self) -> int: ...

    @property
    def unsaved_changes(self) -> int:
        """Adds and removals not yet in the snapshot."""
        ...

    def stats(self) -> IndexStats: ...


class Index(IndexParts, Protocol):
    """An index directory, sharded or not: searched, grown and reported on the same way."""

    directory: Path
    num_codebooks: int

    @property
    def second_stage(self) -> SecondStageRecord | None:
        """The re-ranking stage the index was created with, if any."""
        ...

    def add(
        self,
        descriptors: npt.NDArray[np.floating],
        records: Sequence[NewItem],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items from their (N, D) descriptors; duplicates (by content hash) are reported
        and not added twice. Durable when it returns. ``fine``: the vectors the items were
        indexed from, which an index with a second stage requires."""
        ...

    def add_codes(
        self,
        codes: npt.NDArray[np.integer],
        records: Sequence[NewItem],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items whose (N, M) codes were already assigned with the index's codebooks."""
        ...

    def add_rows(
        self,
        descriptors: npt.NDArray[np.floating],
        blocks: Sequence[FeatureRows],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[IdArray]:
        """Add the rows of feature files (`indexer.index.row_blocks`) from their descriptors,
        the blocks' rows one after another; the ids each block's rows were given. Rows are not
        deduplicated by content: leave out those `stored_rows` finds."""
        ...

    def stored_rows(self, block: FeatureRows) -> npt.NDArray[np.bool_]:
        """Per row of ``block``, whether the index stores that row of its file already."""
        ...

    def search(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None = None,
        *,
        with_records: bool = True,
        fine_queries: npt.NDArray[np.floating] | None = None,
    ) -> list[list[Hit]]:
        """The k best items per query by exact ADC, best first, ties in id order; with
        ``fine_queries``, an index with a second stage re-ranks its shortlist by them."""
        ...

    def search_arrays(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None = None,
        *,
        fine_queries: npt.NDArray[np.floating] | None = None,
    ) -> tuple[FloatArray, IdArray]:
        """`search` as (Q, k) arrays of scores and ids (padded with -inf / -1)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
