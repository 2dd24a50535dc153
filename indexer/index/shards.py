"""`ShardedIndex`: one archive split into S complete index directories, searched as one.

Layout::

    index/
      shards.json          top-level manifest: shard list, codebook fingerprint, card key, next id
      shard-000/ ...       each an ordinary `ArchiveIndex` directory (same model, same codebooks)
      shard-001/ ...

Routing. An item lives in the shard ``sha256(group) mod S`` (an item without a group is routed by
its content hash), so every tile of a patient or slide lies in one shard and deleting that group is
one shard's business. A finished-source journal entry lives in the shard of its source path.

Ids. Search results must be exactly those of one unsharded index, ties broken by smaller id, so
ids must be globally unique and ordered as one index would order them. One id sequence is
allocated for all shards from ``next_id`` in ``shards.json``: each add reserves its block there
(fsynced) before any shard writes, so the ids an index gives are the ids one `ArchiveIndex` fed the
same adds would give (1, 2, 3, ... in add order; duplicates take none). Interleaving shard-local
ids (``local * S + shard``) would need no shared counter, but it orders items by shard position
rather than by arrival, and the tie order of a merged search would then depend on S. A crash
between the reservation and the shard writes only leaves a gap, as AUTOINCREMENT does.

Search. Every shard scores with the same codebooks, so the k best of the union of each shard's k
best are the k best of the whole; merging by (score descending, id ascending) reproduces the
unsharded order, ties included. Filters and ``exclude_group`` are applied inside each shard.
Caveat: a shard with tombstones (items removed since its last snapshot) scores an unfiltered query
in numpy rather than FAISS, and the two sum the same table entries in a different order (scores
differ by up to ~1e-6); until that shard's next `flush`, its scores may differ from the other
shards' in the last float bits, as they do within one index before and after a removal.

Writes are serialised by one lock in this process; one process writes a sharded index at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar, cast

import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexInputError
from indexer.index.manifest import SecondStageRecord
from indexer.index.metadata import FinishedSource
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    assign_codes,
    check_codebooks,
    gathered_adc,
    normalise_subvectors,
    unit_lookup_tables,
)
from indexer.index.protocol import Index, IndexParts, SourceJournal
from indexer.index.records import ItemRecord, NewItem
from indexer.index.row_blocks import FeatureRows
from indexer.index.second_stage import FineQuantiser, SecondStageSettings, unit_rows
from indexer.index.store import (
    AddOutcome,
    ArchiveIndex,
    Hit,
    IndexDirectoryError,
    IndexStats,
    SearchFilters,
    checked_vectors,
)
from model.atomic import atomic_write

__all__ = [
    "SHARDS_MANIFEST",
    "ShardedIndex",
    "ShardedIndexError",
    "ShardedJournal",
    "is_sharded",
    "merge_top_k",
    "open_index_directory",
    "read_shards_manifest",
    "shard_of",
]

SHARDS_MANIFEST = "shards.json"
SHARDS_FORMAT_VERSION = 1
ROUTING = "sha256(group, else content hash) mod shard count"

_Result = TypeVar("_Result")
# Where padding (-1) sorts among ids in a merge: after all of them (a constant: `np.iinfo` builds
# an object per call).
_PADDING_SORT_ID = np.int64(np.iinfo(np.int64).max)


class ShardedIndexError(IndexDirectoryError):
    """A sharded index whose manifest or shards are missing or disagree with each other."""


def shard_of(group: str | None, content_hash: str, shard_count: int) -> int:
    """The shard an item belongs to: a stable hash of its group (or its content if it has none).

    SHA-256 rather than Python's `hash`, which is salted per process.
    """
    key = f"group:{group}" if group is not None else f"item:{content_hash}"
    return _stable_bucket(key, shard_count)


def _source_shard(source: str, shard_count: int) -> int:
    return _stable_bucket(f"source:{source}", shard_count)


def _stable_bucket(key: str, buckets: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def shard_directory_name(number: int) -> str:
    return f"shard-{number:03d}"


def is_sharded(directory: Path) -> bool:
    """Whether ``directory`` holds a sharded index (its top-level manifest)."""
    return (Path(directory) / SHARDS_MANIFEST).is_file()


def merge_top_k(
    scores: Sequence[npt.NDArray[np.float32]],
    ids: Sequence[IdArray],
    k: int,
    codes: Sequence[CodeArray] | None = None,
    tables: FloatArray | None = None,
) -> tuple[FloatArray, IdArray, npt.NDArray[np.intp]]:
    """Merge per-shard (Q, k) best-first results into the (Q, k) best of their union.

    Returns scores, ids and the shard each entry came from. Order: score descending, then id
    ascending (the single index's tie rule); rows end in -inf / -1 where fewer than k items were
    eligible anywhere. With ``codes`` (per shard (Q, k, M), the codes of ``ids``) and ``tables``
    (the queries' (Q, M, K) lookup tables), every candidate is scored again by `gathered_adc`, the
    rule one index applies to filtered searches, so that shards that scored by different paths
    cannot reorder equal codes (see the module doc).
    """
    all_scores = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores], axis=1)
    all_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids], axis=1)
    rows, width = all_ids.shape
    if codes is not None and tables is not None:
        all_codes = np.concatenate(list(codes), axis=1)
        candidates = np.arange(rows * width, dtype=np.intp).reshape(rows, width)
        rescored = gathered_adc(tables, all_codes.reshape(rows * width, -1), candidates)
        all_scores = np.where(all_ids >= 0, rescored, np.float32(-np.inf)).astype(np.float32)
    # Padding (-1) must sort after every real id of the same (-inf) score.
    sort_ids = np.where(all_ids < 0, _PADDING_SORT_ID, all_ids)
    order = np.lexsort((sort_ids, -all_scores), axis=1)[:, :k]
    # Flat indices and the shard of each column found by its bounds: a single query's merge
    # took 23 us with take_along_axis and per-shard origin arrays, 11 us so.
    flat = order if rows == 1 else order + (np.arange(rows) * width)[:, None]
    bounds = list(accumulate(np.shape(part)[1] for part in ids))
    merged_scores: FloatArray = all_scores.ravel()[flat]
    merged_ids: IdArray = all_ids.ravel()[flat]
    return merged_scores, merged_ids, np.searchsorted(bounds, order, side="right")


@dataclass(frozen=True, slots=True)
class ShardAnswer:
    """One shard's part of a search: its (Q, k) best, its tombstone count, and when asked for
    the (Q, k, M) codes of those items (to score every shard's candidates by one rule)."""

    scores: FloatArray
    ids: IdArray
    tombstones: int
    codes: CodeArray | None


class LocalShard(ArchiveIndex):
    """An `ArchiveIndex` that answers a sharded search in one call (see `ShardAnswer`)."""

    @classmethod
    def open_shard(cls, directory: Path) -> LocalShard:
        shard = cls.open(directory)
        assert isinstance(shard, LocalShard)  # `open` builds a `cls`
        return shard

    @classmethod
    def create_shard(
        cls,
        directory: Path,
        codebooks: FloatArray,
        card: Mapping[str, Any],
        card_key: Mapping[str, Any] | None,
        checkpoint_path: Path | None,
        second_stage: SecondStageSettings | None = None,
    ) -> LocalShard:
        shard = cls.create_from_codebooks(
            directory, codebooks, card, card_key, checkpoint_path, second_stage
        )
        assert isinstance(shard, LocalShard)
        return shard

    def answer(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None,
        with_codes: bool,
    ) -> ShardAnswer:
        """The shard's part of a search; ``queries`` come checked and sub-vector normalised
        (`normalise_subvectors`) from the `ShardedIndex`, which does that once for all shards:
        checking and normalising in every shard cost about 10 us a shard for one query."""
        tombstones = self.tombstones
        with self._lock.reading():
            eligible = self._table.eligible(self._term_filter(filters))
            scores, ids = self._table.search(queries, k, eligible, normalised=True)
        codes = None
        if with_codes:
            codes = self.codes_of(ids.ravel()).reshape(*ids.shape, self.num_codebooks)
        return ShardAnswer(scores, ids, tombstones, codes)

    def records_of(self, item_ids: Sequence[int]) -> list[ItemRecord]:
        """Records (without thumbnails) of the given ids that this shard holds."""
        return list(self._metadata.records(item_ids).values())


class Shard(IndexParts, Protocol):
    """What a `ShardedIndex` asks of each shard beyond `IndexParts`: a `LocalShard` or a client
    of a shard in another process."""

    def answer(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None,
        with_codes: bool,
    ) -> ShardAnswer: ...
    def records_of(self, item_ids: Sequence[int]) -> list[ItemRecord]: ...
    @property
    def tombstones(self) -> int: ...
    def add_codes(
        self,
        codes: npt.NDArray[np.integer],
        records: Sequence[NewItem],
        *,
        item_ids: Sequence[int] | None = None,
    ) -> list[AddOutcome]: ...


class ShardedJournal:
    """The finished-source journal of a sharded index: each source's entry lives in the shard
    of its source name, so a lookup by source asks one shard and one by file hash asks all."""

    def __init__(self, journals: Sequence[SourceJournal]) -> None:
        self._journals = list(journals)

    def _of(self, source: str) -> SourceJournal:
        return self._journals[_source_shard(source, len(self._journals))]

    def finished_source(self, source: str) -> str | None:
        return self._of(source).finished_source(source)

    def source_with_hash(self, file_hash: str) -> str | None:
        for journal in self._journals:
            source = journal.source_with_hash(file_hash)
            if source is not None:
                return source
        return None

    def mark_sources_finished(self, finished: Sequence[FinishedSource]) -> None:
        by_shard: dict[int, list[FinishedSource]] = {}
        for entry in finished:
            number = _source_shard(entry.source, len(self._journals))
            by_shard.setdefault(number, []).append(entry)
        for number, entries in by_shard.items():
            self._journals[number].mark_sources_finished(entries)


class ShardedIndex:
    """S `ArchiveIndex` shards behind one `Index` (search, add, remove, get, stats, journal).

    Use `create` or `open`, not the constructor.
    """

    def __init__(
        self,
        directory: Path,
        shards: Sequence[Shard],
        manifest: dict[str, Any],
        parallel: bool | None = None,
    ) -> None:
        self.directory = directory
        self.shards = list(shards)
        self._manifest = manifest
        self._next_id = int(manifest["next_id"])
        first = shards[0]
        self.codebooks = first.codebooks
        self.num_codebooks, self.codebook_size, self.codeword_dim = self.codebooks.shape
        self.descriptor_dim = first.descriptor_dim
        self._writer = threading.Lock()
        # Kept here rather than asked of every shard: a server answers /ready with it on its event
        # loop, where asking shards in other processes would block.
        self._count = sum(len(shard) for shard in self.shards)
        # Set when a shard write failed part-way (a remote shard lost mid-call may or may not
        # have committed): the next write counts the shards again.
        self._count_uncertain = False
        # Shard searches release the GIL in FAISS, so threads scan shards side by side, but a
        # single query only gains where there are cores to spare: with 4 shards on 2 cores it
        # took 800-900 us in threads and 650-680 us shard after shard (one index: 440-460 us).
        # Shards in other processes (`parallel=True`) are always asked at once.
        self._parallel = (os.cpu_count() or 1) > len(self.shards) if parallel is None else parallel
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(shards) - 1), thread_name_prefix="histosearch-shard"
        )

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    # ---- creating and opening ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        checkpoint_path: Path,
        shard_count: int,
        second_stage: SecondStageSettings | None = None,
    ) -> ShardedIndex:
        """Start an empty sharded index for the model in ``checkpoint_path`` (copied per shard)."""
        from model.checkpoint import load_index_model

        model = load_index_model(Path(checkpoint_path))
        return cls.create_from_codebooks(
            directory,
            model.codebooks().detach().cpu().numpy(),
            card=model.card.model_dump(mode="json"),
            shard_count=shard_count,
            card_key=model.card.compatibility_key(),
            checkpoint_path=Path(checkpoint_path),
            second_stage=second_stage,
        )

    @classmethod
    def create_from_codebooks(
        cls,
        directory: Path,
        codebooks: npt.NDArray[np.floating],
        card: Mapping[str, Any],
        shard_count: int,
        card_key: Mapping[str, Any] | None = None,
        checkpoint_path: Path | None = None,
        second_stage: SecondStageSettings | None = None,
    ) -> ShardedIndex:
        """Start an empty sharded index from codebooks in hand (see `ArchiveIndex`'s twin)."""
        directory = Path(directory)
        if shard_count < 1:
            raise ValueError(f"a sharded index needs at least one shard, got {shard_count}")
        if is_sharded(directory) or (directory / "manifest.json").exists():
            raise ShardedIndexError(f"{directory} already holds an index; open it instead")
        unit = check_codebooks(codebooks)
        names = [shard_directory_name(number) for number in range(shard_count)]
        shards = [
            LocalShard.create_shard(
                directory / name, unit, card, card_key, checkpoint_path, second_stage
            )
            for name in names
        ]
        first = _shard_manifest(directory / names[0])
        manifest: dict[str, Any] = {
            "format_version": SHARDS_FORMAT_VERSION,
            "shard_count": shard_count,
            "routing": ROUTING,
            "shards": names,
            "codebook_fingerprint": first["codebook_fingerprint"],
            "card_key": first["card_key"],
            "code_size": first["code_size"],
            "next_id": 1,
        }
        if second_stage is not None:
            record = dict(first["second_stage"])
            record.pop("quantiser_sha256", None)  # each shard's manifest records the range
            manifest["second_stage"] = record
        index = cls(directory, shards, manifest)
        index._write_manifest()
        return index

    @classmethod
    def open(
        cls,
        directory: Path,
        open_shard: Callable[[Path], Shard] | None = None,
        parallel: bool | None = None,
    ) -> ShardedIndex:
        """Open every shard, refusing shards that disagree with the top-level manifest.

        ``open_shard`` opens one shard directory (default: in this process); a server that holds
        each shard in its own process passes a function returning a client of that process.
        ``parallel``: ask the shards at once from threads (default: when there are more cores
        than shards).
        """
        opener: Callable[[Path], Shard] = open_shard or LocalShard.open_shard
        directory = Path(directory)
        manifest = read_shards_manifest(directory)
        names: list[str] = list(manifest["shards"])
        _check_shard_list(directory, manifest, names)
        next_id = int(manifest["next_id"])
        for name in names:
            shard_manifest = _shard_manifest(directory / name)
            for key in ("codebook_fingerprint", "card_key", "code_size"):
                if shard_manifest.get(key) != manifest[key]:
                    raise ShardedIndexError(
                        f"{directory / name} has another {key} than {SHARDS_MANIFEST}: shards of "
                        "one index must share one model and one set of codebooks"
                    )
            snapshot_last = int(shard_manifest.get("snapshot", {}).get("last_item_id", 0))
            if snapshot_last >= next_id:
                raise ShardedIndexError(
                    f"{directory / name} holds id {snapshot_last} but {SHARDS_MANIFEST} allocates "
                    f"from {next_id}: the shard is not from this index"
                )
        shards: list[Shard] = []
        try:
            for name in names:
                shards.append(opener(directory / name))
        except BaseException:
            for shard in shards:
                shard.close()
            raise
        return cls(directory, shards, manifest, parallel)

    def _write_manifest(self) -> None:
        self._manifest = {**self._manifest, "next_id": self._next_id}
        data = json.dumps(self._manifest, indent=2, sort_keys=True).encode()
        atomic_write(self.directory / SHARDS_MANIFEST, lambda path: path.write_bytes(data))

    # ---- changes -------------------------------------------------------------------------------

    @property
    def second_stage(self) -> SecondStageRecord | None:
        """The second stage every shard was created with (None: the compact codes alone)."""
        record = self._manifest.get("second_stage")
        return None if record is None else SecondStageRecord.model_validate(record)

    def _local_shards(self) -> list[LocalShard]:
        """The shards, when all live in this process: the second stage's shards must."""
        local = [shard for shard in self.shards if isinstance(shard, LocalShard)]
        if len(local) != len(self.shards):
            raise ShardedIndexError(
                "a second stage is searched and grown with the shards in this process; shards "
                "served in other processes (Ray) hold none"
            )
        return local

    def _shared_quantiser(self, unit: FloatArray) -> None:
        """Give every shard one trained range (the first rows any shard stores train it)."""
        shards = self._local_shards()
        trained = next((s.quantiser for s in shards if s.quantiser is not None), None)
        quantiser = trained or FineQuantiser.train(unit)
        for shard in shards:
            if shard.quantiser is None:
                shard.adopt_quantiser(quantiser)

    def add(
        self,
        descriptors: npt.NDArray[np.floating],
        records: Sequence[NewItem],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items from their (N, M*d) descriptors, each to its group's shard.

        Duplicates (same content hash in any shard, or earlier in this call) are reported with the
        id they duplicate and not added. Durable in every shard concerned when it returns.
        ``fine``: see `ArchiveIndex.add_codes`.
        """
        array = checked_vectors(descriptors, self.descriptor_dim, "descriptors")
        return self.add_codes(assign_codes(array, self.codebooks), records, fine=fine)

    def add_codes(
        self,
        codes: npt.NDArray[np.integer],
        records: Sequence[NewItem],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items whose (N, M) codes were already assigned with the shards' codebooks."""
        code_array = np.asarray(codes)
        if code_array.shape != (len(records), self.num_codebooks):
            raise ValueError(
                f"expected codes of shape ({len(records)}, {self.num_codebooks}), "
                f"got {code_array.shape}"
            )
        stage = self.second_stage
        if fine is not None and stage is None:
            raise IndexInputError(
                f"the index in {self.directory} has no second stage: it takes no fine vectors"
            )
        if stage is not None:
            if fine is None:
                raise IndexInputError(
                    f"the index in {self.directory} has a second stage ({stage.kind}): each "
                    f"item needs the {stage.dim}-number vector it was indexed from"
                )
            fine = unit_rows(checked_vectors(fine, stage.dim, "fine vectors"))
            if len(fine) != len(records):
                raise IndexInputError(f"{len(records)} items but {len(fine)} fine vectors")
            self._shared_quantiser(fine)
        with self._writer, self._counting():
            outcomes, fresh = self._deduplicated(records)
            first_id = self._reserve_ids(len(fresh))
            by_shard: dict[int, list[int]] = {}
            for position in fresh:
                record = records[position]
                by_shard.setdefault(
                    shard_of(record.group, record.content_hash, self.shard_count), []
                ).append(position)
            ids_of = {position: first_id + rank for rank, position in enumerate(fresh)}
            for shard_number, positions in by_shard.items():
                if fine is not None:
                    written = self._local_shards()[shard_number].add_codes(
                        code_array[positions],
                        [records[p] for p in positions],
                        item_ids=[ids_of[p] for p in positions],
                        fine=fine[positions],
                    )
                else:
                    written = self.shards[shard_number].add_codes(
                        code_array[positions],
                        [records[p] for p in positions],
                        item_ids=[ids_of[p] for p in positions],
                    )
                self._count += sum(outcome.added for outcome in written)
                if not all(outcome.added for outcome in written):
                    # Another writer stored one of these hashes meanwhile: not supported.
                    raise ShardedIndexError(
                        f"shard {shard_number} already held an item this index had not seen"
                    )
            return [_outcome(entry, position, ids_of) for position, entry in enumerate(outcomes)]

    def add_rows(
        self,
        descriptors: npt.NDArray[np.floating],
        blocks: Sequence[FeatureRows],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[IdArray]:
        """Add feature rows as items, each to its group's shard: a block is one file's stretch
        of rows, and the shards of a group need not be the same. Each row's content hash is its
        file and row number, so `stored_rows` finds it again."""
        items = [item for block in blocks for item in block.items()]
        outcomes = iter(self.add(descriptors, items, fine=fine))
        ids: list[IdArray] = []
        for block in blocks:
            taken = [next(outcomes) for _ in range(len(block))]
            ids.append(np.array([o.id for o in taken if o.id is not None], dtype=np.int64))
        return ids

    def stored_rows(self, block: FeatureRows) -> npt.NDArray[np.bool_]:
        """Per row of ``block``, whether a shard stores its file's row already."""
        hashes = block.content_hashes()
        stored = self.known_hashes(hashes)
        return np.array([content_hash in stored for content_hash in hashes], dtype=bool)

    def _deduplicated(
        self, records: Sequence[NewItem]
    ) -> tuple[list[AddOutcome | int | None], list[int]]:
        """Per record: the outcome of a stored duplicate, the position of its first copy in
        this call, or None for a new item; and the positions of the new items, in order."""
        stored = self.known_hashes([record.content_hash for record in records])
        outcomes: list[AddOutcome | int | None] = []
        first_in_call: dict[str, int] = {}
        fresh: list[int] = []
        for position, record in enumerate(records):
            if record.content_hash in stored:
                outcomes.append(AddOutcome(None, stored[record.content_hash]))
            elif record.content_hash in first_in_call:
                outcomes.append(first_in_call[record.content_hash])
            else:
                first_in_call[record.content_hash] = position
                fresh.append(position)
                outcomes.append(None)
        return outcomes, fresh

    def _reserve_ids(self, count: int) -> int:
        """Reserve ``count`` ids (durably, before any shard uses them); returns the first."""
        first = self._next_id
        if count:
            self._next_id += count
            self._write_manifest()
        return first

    def remove(self, item_ids: Sequence[int]) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed.

        Ids do not name their shard, so every shard is asked (each an indexed SQLite lookup).
        """
        wanted = [int(item_id) for item_id in item_ids]
        with self._writer, self._counting():
            removed = sum(self._each(lambda shard: shard.remove(wanted)))
            self._count -= removed
            return removed

    @contextmanager
    def _counting(self) -> Iterator[None]:
        """Keep `len` true around a write: recount first if an earlier write failed part-way,
        and distrust the count if this one does."""
        if self._count_uncertain:
            self._count = sum(len(shard) for shard in self.shards)
            self._count_uncertain = False
        try:
            yield
        except BaseException:
            self._count_uncertain = True
            raise

    def flush(self) -> None:
        """Snapshot every shard (the id counter is already durable)."""
        for shard in self.shards:
            shard.flush()

    def close(self) -> None:
        """Flush shards with unsaved changes and release them."""
        self._pool.shutdown(wait=True)
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- queries -------------------------------------------------------------------------------

    def search(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None = None,
        *,
        with_records: bool = True,
        fine_queries: npt.NDArray[np.floating] | None = None,
    ) -> list[list[Hit]]:
        """The k best items per query over all shards, exactly as one index would rank them.

        With ``fine_queries`` and a second stage, each shard re-ranks its own shortlist and the
        shards' best are merged by their fine scores (one trained range for all shards).
        """
        scores, ids, origin = self._merged(queries, k, filters, fine_queries)
        records: dict[int, ItemRecord] = {}
        if with_records:
            # Only the winners' records, each from the shard that holds it.
            for number in np.unique(origin[ids >= 0]).tolist():
                wanted = ids[(origin == number) & (ids >= 0)].tolist()
                records.update((r.id, r) for r in self.shards[number].records_of(wanted))
        return [
            [
                Hit(item_id, score, records.get(item_id))
                for score, item_id in zip(row_scores, row_ids, strict=True)
                if item_id >= 0
            ]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]

    def search_arrays(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None = None,
        *,
        fine_queries: npt.NDArray[np.floating] | None = None,
    ) -> tuple[FloatArray, IdArray]:
        """`search` as (Q, k) arrays (see `ArchiveIndex.search_arrays`), merged over shards."""
        scores, ids, _ = self._merged(queries, k, filters, fine_queries)
        return scores, ids

    def _merged(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None,
        fine_queries: npt.NDArray[np.floating] | None = None,
    ) -> tuple[FloatArray, IdArray, npt.NDArray[np.intp]]:
        """Every shard's k best, merged.

        One index scores an unfiltered search over a table without tombstones in FAISS and every
        other search with `gathered_adc` in numpy; shards decide that each for itself (a shard
        that never stored the excluded group sees no filter), so every search one index would
        score in numpy is scored again here, from the candidates' codes, by the numpy rule.
        """
        if fine_queries is not None and self.second_stage is not None:
            self._local_shards()  # refuses shards in other processes
            parts = self._each(
                lambda shard: cast(LocalShard, shard).search_arrays(
                    queries, k, filters, fine_queries=fine_queries
                ),
                len(queries) > 1,
            )
            return merge_top_k([part[0] for part in parts], [part[1] for part in parts], k)
        unit = normalise_subvectors(
            checked_vectors(queries, self.descriptor_dim, "queries"), self.num_codebooks
        )
        constrained = filters is not None and any(
            value is not None for value in (filters.label, filters.dataset, filters.exclude_group)
        )
        with_codes = constrained or any(shard.tombstones for shard in self.shards)
        # A batch gives each shard enough work to be worth a thread even without spare cores
        # (300 queries, 4 shards on 2 cores: 1.06x one index in threads, 1.63x in turn).
        batch = len(unit) > 1
        answers = self._each(lambda shard: shard.answer(unit, k, filters, with_codes), batch)
        if not with_codes and any(answer.tombstones for answer in answers):
            # A shard gained tombstones since it was last asked (a remote shard's count is the
            # one it last reported): ask again, with codes.
            with_codes = True
            answers = self._each(lambda shard: shard.answer(unit, k, filters, True), batch)
        codes = [answer.codes for answer in answers if answer.codes is not None]
        tables = unit_lookup_tables(unit, self.codebooks) if with_codes else None
        return merge_top_k(
            [answer.scores for answer in answers],
            [answer.ids for answer in answers],
            k,
            codes if with_codes else None,
            tables,
        )

    def _each(self, work: Callable[[Shard], _Result], at_once: bool = False) -> list[_Result]:
        """``work`` on every shard, in shard order; one shard runs in the calling thread."""
        if len(self.shards) == 1 or not (self._parallel or at_once):
            return [work(shard) for shard in self.shards]
        # The calling thread takes the first shard itself: one hand-off fewer per search.
        rest = [self._pool.submit(work, shard) for shard in self.shards[1:]]
        first = work(self.shards[0])
        return [first, *(future.result() for future in rest)]

    def get(self, item_id: int) -> ItemRecord | None:
        for shard in self.shards:
            record = shard.get(item_id)
            if record is not None:
                return record
        return None

    def thumbnail(self, item_id: int) -> bytes | None:
        for shard in self.shards:
            thumbnail = shard.thumbnail(item_id)
            if thumbnail is not None:
                return thumbnail
        return None

    def scores_of(
        self, query: npt.NDArray[np.floating], item_ids: Sequence[int]
    ) -> list[float | None]:
        """Exact ADC scores of one query against these items, each asked of its own shard."""
        scores: list[float | None] = []
        for item_id in item_ids:
            number = self.shard_holding(item_id)
            scores.append(
                None if number is None else self.shards[number].scores_of(query, [item_id])[0]
            )
        return scores

    def shard_holding(self, item_id: int) -> int | None:
        """The number of the shard that stores ``item_id``, or None."""
        for number, shard in enumerate(self.shards):
            if shard.get(item_id) is not None:
                return number
        return None

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """Ids of stored items with these content hashes, in any shard."""
        found: dict[str, int] = {}
        for part in self._each(lambda shard: shard.known_hashes(hashes)):
            found.update(part)
        return found

    @property
    def journal(self) -> ShardedJournal:
        """The shards' finished-source journals, routed by source (asked for when used: a
        server that only searches never needs its shards' journals)."""
        return ShardedJournal([shard.journal for shard in self.shards])

    def check_model(self, codebooks: npt.NDArray[np.floating]) -> None:
        for shard in self.shards:
            shard.check_model(codebooks)

    @property
    def card(self) -> dict[str, Any]:
        return self.shards[0].card

    @property
    def checkpoint_path(self) -> Path | None:
        return self.shards[0].checkpoint_path

    def __len__(self) -> int:
        """Items in all shards (as changed through this object)."""
        return self._count

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    @property
    def unsaved_changes(self) -> int:
        return sum(shard.unsaved_changes for shard in self.shards)

    def shard_stats(self) -> list[IndexStats]:
        return [shard.stats() for shard in self.shards]

    def stats(self) -> IndexStats:
        """One `IndexStats` for the whole index: counts summed over shards."""
        parts = self.shard_stats()
        first = parts[0]
        return IndexStats(
            directory=str(self.directory),
            items=sum(part.items for part in parts),
            labels=_summed(part.labels for part in parts),
            datasets=_summed(part.datasets for part in parts),
            num_codebooks=first.num_codebooks,
            codebook_size=first.codebook_size,
            codeword_dim=first.codeword_dim,
            code_bytes=first.code_bytes,
            codebook_fingerprint=first.codebook_fingerprint,
            unsaved_changes=sum(part.unsaved_changes for part in parts),
            tombstones=sum(part.tombstones for part in parts),
            memory_bytes=sum(part.memory_bytes for part in parts),
            card=first.card,
            second_stage=_summed_stage([part.second_stage for part in parts]),
        )


def _summed_stage(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The shards' second stage as one: the first shard's record, RAM and files summed."""
    if parts[0] is None:
        return None
    stage = dict(parts[0])
    stage["unsaved_ram_bytes"] = sum(part["unsaved_ram_bytes"] for part in parts if part)
    stage["files"] = [file for part in parts if part for file in part["files"]]
    return stage


def _outcome(entry: AddOutcome | int | None, position: int, ids_of: dict[int, int]) -> AddOutcome:
    """The outcome of one record once the new items' ids are known (see `_deduplicated`)."""
    if entry is None:
        return AddOutcome(ids_of[position], None)
    if isinstance(entry, int):
        return AddOutcome(None, ids_of[entry])
    return entry


def _summed(counts: Iterator[dict[str | None, int]]) -> dict[str | None, int]:
    total: dict[str | None, int] = {}
    for part in counts:
        for name, count in part.items():
            total[name] = total.get(name, 0) + count
    return dict(sorted(total.items(), key=lambda entry: (entry[0] is not None, entry[0] or "")))


# ---- directory checks ------------------------------------------------------------------------


def read_shards_manifest(directory: Path) -> dict[str, Any]:
    """The top-level manifest of a sharded index, checked for its format and keys."""
    path = directory / SHARDS_MANIFEST
    if not path.is_file():
        raise ShardedIndexError(f"{directory} has no {SHARDS_MANIFEST}: not a sharded index")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardedIndexError(f"{path} is unreadable: {error}") from error
    if manifest.get("format_version") != SHARDS_FORMAT_VERSION:
        raise ShardedIndexError(
            f"{path} has format version {manifest.get('format_version')!r}; this program reads "
            f"version {SHARDS_FORMAT_VERSION}"
        )
    required = ("shard_count", "shards", "codebook_fingerprint", "card_key", "code_size", "next_id")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ShardedIndexError(f"{path} lacks {', '.join(missing)}")
    return manifest


def _check_shard_list(directory: Path, manifest: Mapping[str, Any], names: list[str]) -> None:
    count = int(manifest["shard_count"])
    expected = [shard_directory_name(number) for number in range(count)]
    if names != expected:
        raise ShardedIndexError(
            f"{SHARDS_MANIFEST} lists shards {names} for a count of {count} (expected {expected})"
        )
    present = sorted(path.name for path in directory.glob("shard-*") if path.is_dir())
    if present != expected:
        raise ShardedIndexError(
            f"{directory} holds shard directories {present} but {SHARDS_MANIFEST} lists "
            f"{count}: {expected}"
        )


def _shard_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardedIndexError(f"shard {directory} has no readable manifest: {error}") from error
    return manifest


def open_index_directory(directory: Path) -> Index:
    """Open an index directory, sharded or not (both are an `Index`)."""
    return ShardedIndex.open(directory) if is_sharded(directory) else ArchiveIndex.open(directory)
