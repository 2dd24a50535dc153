"""`ArchiveIndex`: an index directory that a service can load in seconds and grow in place.

Directory contents (each file written to a temporary name, fsynced, then renamed):

- ``metadata.sqlite`` - the source of truth: every item with its packed code, the removal journal,
  the vocabulary of labels / datasets / groups, the codebooks and the finished-source journal.
- ``codes.<gen>.faiss`` - snapshot of the codes as a FAISS ``IndexIDMap(IndexPQ)`` over the
  model's own codewords and our stable ids (readable by plain FAISS).
- ``columns.<gen>.npz`` - snapshot of the filter columns (label, dataset, group vocabulary ids) in
  the order of the codes, so that opening never has to read every SQLite row.
- ``model.pt`` and ``model_card.json`` - the checkpoint the codes came from, and its card.
- ``manifest.json`` - written last (`indexer.index.manifest`): format version, code geometry,
  codebook fingerprint, card key, the digests of the card and checkpoint, and the snapshot: its
  generation, how far into the SQLite journal it reaches, and the size + SHA-256 of its files.
  Replacing it commits a snapshot as one (`indexer.index.snapshot_files`). Indexes of format 1
  (fixed names ``codes.faiss`` and ``columns.npz``) open as generation 0.

Items added or removed after the last snapshot are replayed from SQLite on open. A snapshot that
does not match (size or digest, a missing file, other items than SQLite holds) is rebuilt from
SQLite with a warning: every item row holds its code. What SQLite cannot vouch for is refused
with a message naming `histosearch repair`: an unreadable database, or a model card, checkpoint or
codebooks other than the ones the manifest recorded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import numpy.typing as npt

from indexer.index import fine_codes
from indexer.index.codetable import (
    ALL,
    NO_FILTER,
    NO_TERM,
    NONE,
    CodeTable,
    Columns,
    Everything,
    Nothing,
)
from indexer.index.codetable import TermFilter as TermFilter
from indexer.index.errors import (
    IndexDirectoryError,
    IndexInputError,
    SnapshotMismatchError,
    with_repair_hint,
)
from indexer.index.fine_codes import FineCodes
from indexer.index.locks import ReadWriteLock
from indexer.index.manifest import MANIFEST as MANIFEST
from indexer.index.manifest import IndexManifest, SecondStageRecord, Snapshot, read_manifest
from indexer.index.metadata import TERM_KINDS, CodeRow, MetadataStore, SlideRow
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    assign_codes,
    check_codebooks,
    code_size_bytes,
    codebook_fingerprint,
    pack_codes,
    unpack_codes,
)
from indexer.index.protocol import SourceJournal
from indexer.index.records import ItemRecord, NewItem
from indexer.index.row_blocks import FeatureRows
from indexer.index.second_stage import (
    FineQuantiser,
    SecondStageSettings,
    rerank_shortlists,
    unit_rows,
)
from indexer.index.snapshot_files import (
    read_generation,
    remove_other_generations,
    sha256_of,
    write_generation,
)
from model.atomic import atomic_write

__all__ = [
    "AddOutcome",
    "ArchiveIndex",
    "Hit",
    "IndexDirectoryError",
    "IndexInputError",
    "IndexStats",
    "ItemRecord",
    "NewItem",
    "SearchFilters",
    "SnapshotMismatchError",
]

log = logging.getLogger(__name__)

CARD = "model_card.json"
CHECKPOINT = "model.pt"
METADATA = "metadata.sqlite"
# Compact the in-memory table once this share of its positions are tombstones.
_COMPACT_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Restrict hits to a label and/or dataset, and/or leave out one group (patient, slide)."""

    label: str | None = None
    dataset: str | None = None
    exclude_group: str | None = None


class Hit(NamedTuple):
    """One search result: the item id, its exact ADC score (higher is closer) and its record.

    A named tuple rather than a frozen dataclass: k of these are made per search, and a tuple
    is built several times faster.
    """

    id: int
    score: float
    record: ItemRecord | None


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """Result of adding one item: its new id, or the id of the stored item it duplicates."""

    id: int | None
    duplicate_of: int | None

    @property
    def added(self) -> bool:
        return self.id is not None


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What `histosearch stats` prints about an index."""

    directory: str
    items: int
    labels: dict[str | None, int]
    datasets: dict[str | None, int]
    num_codebooks: int
    codebook_size: int
    codeword_dim: int
    code_bytes: int
    codebook_fingerprint: str
    unsaved_changes: int
    tombstones: int
    memory_bytes: int
    card: dict[str, Any]
    # The re-ranking stage of an index created with one (`ArchiveIndex.second_stage_stats`).
    second_stage: dict[str, Any] | None = None


class ArchiveIndex:
    """FAISS PQ codes over the model's codebooks + SQLite metadata, in one directory.

    Searches may run concurrently from many threads; adds, removes and flushes take a write lock.
    Use `create` or `open`, not the constructor.
    """

    def __init__(
        self,
        directory: Path,
        codebooks: FloatArray,
        metadata: MetadataStore,
        manifest: IndexManifest,
    ) -> None:
        self.directory = directory
        self.codebooks = codebooks
        self.num_codebooks, self.codebook_size, self.codeword_dim = codebooks.shape
        self.descriptor_dim = self.num_codebooks * self.codeword_dim
        self._metadata = metadata
        self._manifest = manifest
        self._table = CodeTable(codebooks)
        # Lock order: _flush_lock, then _writer, then _lock. _writer serialises changes (ids must
        # reach the table in the order SQLite gave them); _lock is only held for the in-memory
        # update, so searches keep running while a change waits for its fsync.
        self._lock = ReadWriteLock()
        self._writer = threading.Lock()
        self._flush_lock = threading.Lock()
        self._unsaved = 0
        # How the table was filled on open, for logs and `histosearch repair`'s report.
        self.opened_from = "a new index"
        # The optional second stage: its codes, and its quantiser once the first rows trained it.
        stage = manifest.second_stage
        self._fine = None if stage is None else FineCodes(stage.dim)
        self._quantiser: FineQuantiser | None = None

    # ---- creating and opening ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        checkpoint_path: Path,
        second_stage: SecondStageSettings | None = None,
    ) -> ArchiveIndex:
        """Start an empty index for the model in ``checkpoint_path`` (copied in as ``model.pt``)."""
        from model.checkpoint import load_index_model

        model = load_index_model(Path(checkpoint_path))
        codebooks = model.codebooks().detach().cpu().numpy()
        return cls.create_from_codebooks(
            directory,
            codebooks,
            card=model.card.model_dump(mode="json"),
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
        card_key: Mapping[str, Any] | None = None,
        checkpoint_path: Path | None = None,
        second_stage: SecondStageSettings | None = None,
    ) -> ArchiveIndex:
        """Start an empty index from codebooks (M, K, d) already in hand.

        Without ``checkpoint_path`` the directory has no ``model.pt``: enough for benchmarks and
        tests on synthetic codes, not for a service that must embed queries. ``second_stage``
        turns on re-ranking by finer codes of the card's input vectors (a feature model's
        ``input_dim``); it is chosen here, once.
        """
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise IndexDirectoryError(f"{directory} already holds an index; open it instead")
        unit_codebooks = check_codebooks(codebooks)
        directory.mkdir(parents=True, exist_ok=True)
        if checkpoint_path is not None:
            atomic_write(
                directory / CHECKPOINT, lambda path: shutil.copyfile(checkpoint_path, path)
            )
        card_bytes = json.dumps(dict(card), indent=2, sort_keys=True).encode()
        atomic_write(directory / CARD, lambda path: path.write_bytes(card_bytes))
        num_codebooks, codebook_size, codeword_dim = unit_codebooks.shape
        manifest = IndexManifest(
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            codeword_dim=codeword_dim,
            code_size=code_size_bytes(num_codebooks, codebook_size),
            codebook_fingerprint=codebook_fingerprint(unit_codebooks),
            card_key=dict(card_key) if card_key is not None else _geometry_of(card),
            card_sha256=hashlib.sha256(card_bytes).hexdigest(),
            checkpoint_sha256=None
            if checkpoint_path is None
            else sha256_of(directory / CHECKPOINT),
            second_stage=None if second_stage is None else _second_stage_record(card, second_stage),
        )
        metadata = MetadataStore(directory / METADATA)
        metadata.set_properties(
            {
                # The SQLite schema's own version; the manifest has its own format version.
                "format_version": "1",
                "codebook_fingerprint": manifest.codebook_fingerprint,
                "code_size": str(manifest.code_size),
                "codebooks": unit_codebooks.tobytes(),
                "codebooks_shape": json.dumps(list(unit_codebooks.shape)),
            }
        )
        index = cls(directory, unit_codebooks, metadata, manifest)
        index.flush()
        return index

    @classmethod
    def open(cls, directory: Path) -> ArchiveIndex:
        """Open an index directory, checking that its parts agree, and replay unsaved changes.

        A snapshot that does not match the manifest or SQLite is rebuilt from SQLite (logged as a
        warning). Raises IndexDirectoryError, naming the first disagreement and the repair
        command, for what SQLite cannot vouch for.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        _check_model_files(directory, manifest)
        metadata = MetadataStore(directory / METADATA)
        try:
            codebooks = _codebooks_from_metadata(directory, metadata, manifest)
            index = cls(directory, codebooks, metadata, manifest)
            index._load_quantiser()
            index._load_or_rebuild()
        except sqlite3.DatabaseError as error:
            metadata.close()
            raise IndexDirectoryError(
                with_repair_hint(f"{METADATA} cannot be read: {error}", directory)
            ) from error
        except BaseException:
            metadata.close()
            raise
        return index

    def _load_quantiser(self) -> None:
        """The second stage's trained range from SQLite, checked against the manifest."""
        stage = self._manifest.second_stage
        if stage is None:
            return
        stored = self._metadata.properties().get(fine_codes.QUANTISER_PROPERTY)
        if stored is not None:
            self._quantiser = FineQuantiser.from_bytes(stage.dim, bytes(stored))
        found = None if self._quantiser is None else self._quantiser.fingerprint
        if stage.quantiser_sha256 is not None and found != stage.quantiser_sha256:
            raise IndexDirectoryError(
                with_repair_hint(
                    f"the second stage's quantiser in {METADATA} is not the one {MANIFEST} "
                    "recorded",
                    self.directory,
                )
            )

    def _load_or_rebuild(self) -> None:
        try:
            self._load_snapshot()
            self._replay_journal()
            self._check_against_metadata()
        except SnapshotMismatchError as mismatch:
            log.warning("%s: %s; rebuilding the codes from %s", self.directory, mismatch, METADATA)
            self.rebuild_from_metadata(reason=str(mismatch))

    def rebuild_from_metadata(self, reason: str = "asked to") -> None:
        """Refill the table from every SQLite row, ignoring the snapshot on disk.

        Every item then counts as unsaved (at least one change, so that the next `flush` replaces
        the snapshot even of an empty index).
        """
        with self._writer, self._lock.writing():
            rows = list(self._metadata.rows_after(0))
            codes, ids, columns = self._table_arrays(rows)
            self._table.reset(codes, ids, columns)
            if self._fine is not None:
                self._fine.reset(*self._fine_rows_after(0))
            self._unsaved = max(1, len(rows))
        self.opened_from = f"rebuilt from {METADATA} ({len(rows)} items): {reason}"

    def _load_snapshot(self) -> None:
        snapshot = self._manifest.committed()
        codes, ids, columns = read_generation(
            self.directory, snapshot, self.codebooks, self._manifest.code_size
        )
        self._table.reset(codes, ids, columns)
        if self._fine is not None:
            self._fine.load_generation(self.directory, snapshot)

    def _fine_rows_after(self, last_id: int) -> tuple[IdArray, npt.NDArray[np.uint8]]:
        assert self._fine is not None
        return self._metadata.fine_codes_after(last_id, self._fine.dim)

    def _table_arrays(self, rows: Sequence[CodeRow]) -> tuple[CodeArray, IdArray, Columns]:
        """Codes, ids and filter columns of SQLite rows, as the table holds them."""
        packed = np.frombuffer(b"".join(row.code for row in rows), dtype=np.uint8)
        codes = unpack_codes(
            packed.reshape(len(rows), self._manifest.code_size),
            self.num_codebooks,
            self.codebook_size,
        )
        ids = np.array([row.id for row in rows], dtype=np.int64)
        terms = Columns(
            *(
                np.array([self._term(kind, getattr(row, kind)) for row in rows], dtype=np.int32)
                for kind in TERM_KINDS
            )
        )
        return codes, ids, terms

    def _replay_journal(self) -> None:
        snapshot = self._manifest.committed()
        rows = list(self._metadata.rows_after(snapshot.last_item_id))
        if rows and rows[0].id <= self._table.last_id:
            raise SnapshotMismatchError(
                f"the snapshot holds ids up to {self._table.last_id} but says it ends at "
                f"{snapshot.last_item_id}"
            )
        if rows:
            self._table.append(*self._table_arrays(rows))
        if self._fine is not None:
            self._fine.append(*self._fine_rows_after(snapshot.last_item_id))
        removed = self._metadata.removals_after(snapshot.last_removal_seq)
        self._table.remove(removed)
        self._unsaved = len(rows) + len(removed)
        self.opened_from = (
            f"snapshot generation {snapshot.generation} ({snapshot.items} items) with "
            f"{len(rows)} adds and {len(removed)} removals replayed from {METADATA}"
        )
        if self._unsaved:
            log.info(
                "replayed %d adds and %d removals newer than the snapshot", len(rows), len(removed)
            )

    def _term(self, kind: str, name: str | None) -> int:
        term = self._metadata.term_id(kind, name)
        return NO_TERM if term is None else term

    def _check_against_metadata(self) -> None:
        """SnapshotMismatchError unless snapshot + journal hold exactly SQLite's items.

        Compares the count and the sum of the ids (one indexed SQLite query), and that the
        snapshot does not reach past SQLite's journal (a snapshot of a newer or another database).
        """
        snapshot = self._manifest.committed()
        if snapshot.last_item_id > self._metadata.last_allocated_id():
            raise SnapshotMismatchError(
                f"the snapshot reaches item id {snapshot.last_item_id}, past the last id "
                f"{METADATA} gave ({self._metadata.last_allocated_id()})"
            )
        if snapshot.last_removal_seq > self._metadata.last_removal_seq():
            raise SnapshotMismatchError(
                f"the snapshot reaches removal {snapshot.last_removal_seq}, past the last one "
                f"{METADATA} journalled ({self._metadata.last_removal_seq()})"
            )
        stored, id_sum = self._metadata.count_and_id_sum()
        held, held_sum = len(self._table), self._table.live_id_sum()
        if (stored, id_sum) != (held, held_sum):
            raise SnapshotMismatchError(
                f"{METADATA} holds {stored} items but the snapshot plus the journal give {held}"
                + ("" if stored != held else " with other ids")
            )

    # ---- changes -------------------------------------------------------------------------------

    def add(
        self,
        descriptors: npt.NDArray[np.floating],
        records: Sequence[NewItem],
        *,
        item_ids: Sequence[int] | None = None,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items from their (N, M*d) descriptors; codes come from the model's codebooks.

        Duplicates (same content hash, stored or earlier in this call) are not added again.
        Durable when it returns. ``item_ids`` and ``fine``: see `add_codes`.
        """
        array = self._checked_vectors(descriptors, "descriptors")
        return self.add_codes(
            assign_codes(array, self.codebooks), records, item_ids=item_ids, fine=fine
        )

    def add_codes(
        self,
        codes: npt.NDArray[np.integer],
        records: Sequence[NewItem],
        *,
        item_ids: Sequence[int] | None = None,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[AddOutcome]:
        """Add items whose (N, M) codes were already assigned with this index's codebooks.

        ``item_ids`` (increasing, above every id this index has held) replaces the ids SQLite
        would allocate: a sharded index allocates one id sequence over all its shards.
        ``fine``: the (N, D) vectors the items were indexed from, required by an index with a
        second stage (scaled to unit length and stored as its finer codes), refused otherwise.
        """
        code_array = np.asarray(codes)
        if code_array.shape != (len(records), self.num_codebooks):
            raise IndexInputError(
                f"expected codes of shape ({len(records)}, {self.num_codebooks}), "
                f"got {code_array.shape}"
            )
        if code_array.size and (code_array.min() < 0 or code_array.max() >= self.codebook_size):
            raise IndexInputError(f"codes must lie in [0, {self.codebook_size})")
        small: CodeArray = code_array.astype(np.uint8)
        packed = pack_codes(small, self.codebook_size)
        fine_vectors = self._checked_fine(fine, len(records))
        with self._writer:
            if item_ids is not None:
                self._check_given_ids(item_ids, len(records))
            fine_codes_of_add = None if fine_vectors is None else self._fine_codes(fine_vectors)
            result = self._metadata.insert(
                records,
                [row.tobytes() for row in packed],
                item_ids,
                None if fine_codes_of_add is None else [row.tobytes() for row in fine_codes_of_add],
            )
            added = np.array(
                [i for i, new in enumerate(result.new_ids) if new is not None], dtype=np.intp
            )
            self._append(
                small[added],
                np.array([result.new_ids[i] for i in added], dtype=np.int64),
                result.term_ids,
                None if fine_codes_of_add is None else fine_codes_of_add[added],
            )
        return [
            AddOutcome(new, duplicate)
            for new, duplicate in zip(result.new_ids, result.duplicate_of, strict=True)
        ]

    def add_rows(
        self,
        descriptors: npt.NDArray[np.floating],
        blocks: Sequence[FeatureRows],
        *,
        fine: npt.NDArray[np.floating] | None = None,
    ) -> list[IdArray]:
        """Add feature rows from their (N, M*d) descriptors, the rows of ``blocks`` one after
        another, each block stored as one record (`indexer.index.row_blocks`). Durable when it
        returns; the ids given to each block's rows. A block longer than
        `indexer.index.row_blocks.MAX_BLOCK_ROWS` is stored in parts. Rows are not looked up by
        content: leave out those `stored_rows` says are stored. ``fine``: see `add_codes`.
        """
        parts = [part for block in blocks for part in block.parts()]
        count = sum(len(part) for part in parts)
        array = self._checked_vectors(descriptors, "descriptors")
        if len(array) != count:
            raise IndexInputError(f"{count} feature rows but {len(array)} descriptors")
        small: CodeArray = assign_codes(array, self.codebooks).astype(np.uint8)
        packed = pack_codes(small, self.codebook_size)
        fine_vectors = self._checked_fine(fine, count)
        spans = _spans(parts)
        with self._writer:
            fine_codes_of_add = None if fine_vectors is None else self._fine_codes(fine_vectors)
            result = self._metadata.insert_rows(
                parts,
                [packed[start:stop].tobytes() for start, stop in spans],
                None
                if fine_codes_of_add is None
                else [fine_codes_of_add[start:stop].tobytes() for start, stop in spans],
            )
            ids = np.concatenate(result.ids) if result.ids else np.zeros(0, dtype=np.int64)
            self._append(small, ids, result.term_ids, fine_codes_of_add, packed)
        return [ids[start:stop] for start, stop in _spans(blocks)]

    def stored_rows(self, block: FeatureRows) -> npt.NDArray[np.bool_]:
        """Per row of ``block``, whether its file's row is stored already (a resumed run)."""
        stored = self._metadata.stored_rows(block.journal_key)
        return np.isin(block.rows, np.fromiter(stored, dtype=np.int64, count=len(stored)))

    def _append(
        self,
        codes: CodeArray,
        ids: IdArray,
        term_ids: Mapping[str, Sequence[int]],
        fine_codes_of_add: npt.NDArray[np.uint8] | None,
        packed: CodeArray | None = None,
    ) -> None:
        """Put items just stored in SQLite into the searchable table (caller holds the writer)."""
        terms = Columns(*(np.array(term_ids[kind], dtype=np.int32) for kind in TERM_KINDS))
        with self._lock.writing():
            self._table.append(codes, ids, terms, packed)
            if self._fine is not None and fine_codes_of_add is not None:
                self._fine.append(ids, fine_codes_of_add)
        self._unsaved += len(ids)

    def _checked_fine(self, fine: npt.NDArray[np.floating] | None, count: int) -> FloatArray | None:
        """Unit rows of the fine vectors an add brings: required with a second stage only."""
        stage = self._manifest.second_stage
        if stage is None:
            if fine is not None:
                raise IndexInputError(
                    f"the index in {self.directory} has no second stage: it takes no fine vectors"
                )
            return None
        if fine is None:
            raise IndexInputError(
                f"the index in {self.directory} has a second stage ({stage.kind}): each item "
                f"needs the {stage.dim}-number vector it was indexed from"
            )
        rows = checked_vectors(fine, stage.dim, "fine vectors")
        if len(rows) != count:
            raise IndexInputError(f"{count} items but {len(rows)} fine vectors")
        return unit_rows(rows)

    def _fine_codes(self, unit: FloatArray) -> npt.NDArray[np.uint8]:
        """The 8-bit codes of unit rows; the first rows an index stores train its range."""
        if self._quantiser is None:
            quantiser = FineQuantiser.train(unit)
            self._metadata.set_properties({fine_codes.QUANTISER_PROPERTY: quantiser.to_bytes()})
            self._quantiser = quantiser
            log.info("%s: second stage's range trained on %d rows", self.directory, len(unit))
        return self._quantiser.encode(unit)

    def _check_given_ids(self, item_ids: Sequence[int], count: int) -> None:
        """Refuse ids the journal replay could miss (at or below an id already held)."""
        floor = max(self._table.last_id, self._metadata.last_allocated_id())
        given = np.asarray(item_ids, dtype=np.int64)
        if len(given) != count or (count and (given[0] <= floor or np.any(np.diff(given) <= 0))):
            raise ValueError(f"item ids must be {count} increasing ids above {floor}")

    def remove(self, item_ids: Sequence[int]) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""
        with self._writer:
            # Its fine code goes with the item's row; a removed item never reaches a shortlist.
            deleted = self._metadata.delete(list(item_ids))
            with self._lock.writing():
                removed = self._table.remove(deleted)
                if self._table.tombstones > _COMPACT_SHARE * max(
                    1, len(self._table) + self._table.tombstones
                ):
                    self._table.compact()
            self._unsaved += removed
        return removed

    def flush(self) -> None:
        """Write a new snapshot generation, then the manifest that commits it, then drop the old.

        A crash at any point leaves the old snapshot or the new one whole (see
        `indexer.index.snapshot_files`); either way SQLite replays what it lacks.
        """
        with self._flush_lock:
            with self._writer, self._lock.writing():
                self._table.compact()
                ids, codes, columns = self._table.live_arrays()
                # Every id SQLite gave so far is in the table or journalled as removed, so the
                # snapshot reaches that far even when the newest items were removed again.
                last_item_id = self._metadata.last_allocated_id()
                last_removal_seq = self._metadata.last_removal_seq()
                unsaved_before = self._unsaved
            previous = self._manifest.snapshot
            generation = 1 if previous is None else previous.generation + 1
            codes_entry, columns_entry = write_generation(
                self.directory, generation, self.codebooks, ids, codes, columns
            )
            fine_entry, fine_ids_entry = (
                (None, None)
                if self._fine is None
                else self._fine.write_generation(self.directory, generation, ids)
            )
            snapshot = Snapshot(
                generation=generation,
                items=len(ids),
                last_item_id=last_item_id,
                last_removal_seq=last_removal_seq,
                codes=codes_entry,
                columns=columns_entry,
                fine=fine_entry,
                fine_ids=fine_ids_entry,
            )
            manifest = self._manifest.with_snapshot(snapshot)
            if manifest.second_stage is not None and self._quantiser is not None:
                stage = manifest.second_stage.model_copy(
                    update={"quantiser_sha256": self._quantiser.fingerprint}
                )
                manifest = manifest.model_copy(update={"second_stage": stage})
            manifest_bytes = manifest.to_bytes()
            atomic_write(self.directory / MANIFEST, lambda path: path.write_bytes(manifest_bytes))
            self._manifest = manifest
            if self._fine is not None:
                with self._writer, self._lock.writing():
                    self._fine.load_committed(self.directory, snapshot)
            with self._writer:
                self._unsaved -= unsaved_before
            remove_other_generations(self.directory, snapshot)

    def close(self) -> None:
        """Flush if anything changed since the last snapshot, then release the database."""
        if self._unsaved:
            self.flush()
        self._metadata.close()

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
        """The k best items per query by exact ADC (queries never quantised), best first.

        Filtered searches still return k hits whenever k eligible items exist. With
        ``fine_queries`` an index with a second stage re-ranks (see `search_arrays`).
        """
        scores, ids = self.search_arrays(queries, k, filters, fine_queries=fine_queries)
        records = self._metadata.records(ids[ids >= 0].tolist()) if with_records else {}
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
        """`search` as (Q, k) arrays of scores and ids, no result objects: for batches.

        Each row is best first, ties in id order; a row ends in score -inf and id -1 where fewer
        than k items are eligible. With ``fine_queries`` (Q, D), the float vectors of the
        queries in the second stage's space, an index with a second stage takes the ADC
        shortlist of ``shortlist_factor x k`` eligible items and returns its best k by inner
        product with their decoded fine codes (the scores are those inner products); without
        them, or without a second stage, the ADC ranking is the answer.
        """
        array = self._checked_vectors(queries, "queries")
        fine = self._checked_fine_queries(fine_queries, len(array))
        with self._lock.reading():
            eligible = self._table.eligible(self._term_filter(filters))
            if fine is None:
                return self._table.search(array, k, eligible)
            assert self._fine is not None and self._quantiser is not None
            _, shortlists = self._table.search(array, k * self.shortlist_factor, eligible)
            return rerank_shortlists(fine, shortlists, self._fine.codes_of, self._quantiser, k)

    def _checked_fine_queries(
        self, fine_queries: npt.NDArray[np.floating] | None, count: int
    ) -> FloatArray | None:
        """Unit rows of the fine queries, None when the compact codes alone rank."""
        stage = self._manifest.second_stage
        if fine_queries is None or stage is None:
            return None
        rows = checked_vectors(fine_queries, stage.dim, "fine queries")
        if len(rows) != count:
            raise IndexInputError(f"{count} queries but {len(rows)} fine queries")
        # Nothing stored yet: no range trained, nothing to re-rank.
        return None if self._quantiser is None else unit_rows(rows)

    @property
    def second_stage(self) -> SecondStageRecord | None:
        """The second stage this index was created with (None: the compact codes alone)."""
        return self._manifest.second_stage

    @property
    def quantiser(self) -> FineQuantiser | None:
        """The second stage's trained range (None before the first rows, or without one)."""
        return self._quantiser

    def adopt_quantiser(self, quantiser: FineQuantiser) -> None:
        """Take a range trained elsewhere before storing any row: the shards of one index
        share one, so that their re-ranked scores compare (indexer/index/shards.py)."""
        with self._writer:
            if self._manifest.second_stage is None:
                raise IndexInputError(f"the index in {self.directory} has no second stage")
            if self._quantiser is not None:
                if self._quantiser.fingerprint != quantiser.fingerprint:
                    raise IndexInputError(
                        f"the index in {self.directory} already has another trained range"
                    )
                return
            self._metadata.set_properties({fine_codes.QUANTISER_PROPERTY: quantiser.to_bytes()})
            self._quantiser = quantiser

    @property
    def shortlist_factor(self) -> int:
        stage = self._manifest.second_stage
        return 1 if stage is None else stage.shortlist_factor

    def fine_vectors_of(self, item_ids: Sequence[int]) -> FloatArray:
        """The decoded fine codes of held items, as fine queries (more like this item).

        KeyError for an item not held; IndexInputError without a second stage.
        """
        with self._lock.reading():
            if self._fine is None or self._quantiser is None:
                raise IndexInputError(f"the index in {self.directory} has no second stage")
            wanted = np.asarray(item_ids, dtype=np.int64)
            return self._quantiser.decode(self._fine.codes_of(wanted))

    def second_stage_stats(self) -> dict[str, Any] | None:
        """Kind, bytes per item, where the codes live and the shortlist factor (`stats`)."""
        stage = self._manifest.second_stage
        if stage is None or self._fine is None:
            return None
        snapshot = self._manifest.snapshot
        return {
            "kind": stage.kind,
            "dim": stage.dim,
            "code_bytes": stage.dim,
            "shortlist_factor": stage.shortlist_factor,
            "quantiser_sha256": stage.quantiser_sha256,
            "trained": self._quantiser is not None,
            "where": "disk (memory-mapped snapshot) and SQLite; adds since the snapshot in RAM",
            "files": [] if snapshot is None or snapshot.fine is None else list(snapshot.fine_files),
            "unsaved_ram_bytes": self._fine.ram_bytes(),
        }

    def codes_of(self, item_ids: npt.ArrayLike) -> CodeArray:
        """(N, M) codes of the given ids (a row of zeros for an id not held), so that a sharded
        index can score the candidates of all its shards with one rule (indexer/index/shards.py).
        """
        with self._lock.reading():
            positions = self._table.position_of(item_ids)
            held = positions >= 0
            codes: CodeArray = np.zeros((len(positions), self.num_codebooks), dtype=np.uint8)
            codes[held] = self._table.codes_at(positions[held])
        return codes

    @property
    def tombstones(self) -> int:
        """Removed items still held in the searchable table until its next compaction."""
        return self._table.tombstones

    def _term_filter(self, filters: SearchFilters | None) -> TermFilter | Nothing:
        """Vocabulary ids of the filter; `NONE` when a required label or dataset was never
        stored (no item can pass)."""
        if filters is None:
            return NO_FILTER
        label = self._required_term("label", filters.label)
        dataset = self._required_term("dataset", filters.dataset)
        if label is NONE or dataset is NONE:
            return NONE
        group = self._metadata.term_id("group", filters.exclude_group)
        # A group never stored leaves out nothing.
        return TermFilter(label, dataset, NONE if group is None else group)

    def _required_term(self, kind: str, name: str | None) -> int | Everything | Nothing:
        """The term id of a required name, `ALL` when none is asked, `NONE` if never stored."""
        if name is None:
            return ALL
        term = self._metadata.term_id(kind, name)
        return NONE if term is None else term

    def _checked_vectors(self, vectors: npt.NDArray[np.floating], what: str) -> FloatArray:
        return checked_vectors(vectors, self.descriptor_dim, what)

    def get(self, item_id: int) -> ItemRecord | None:
        return self._metadata.record(int(item_id))

    def thumbnail(self, item_id: int) -> bytes | None:
        return self._metadata.thumbnail(int(item_id))

    def scores_of(
        self, query: npt.NDArray[np.floating], item_ids: Sequence[int]
    ) -> list[float | None]:
        """Exact ADC scores of one query against these items (None for an absent item)."""
        array = self._checked_vectors(query, "query")[:1]
        with self._lock.reading():
            scores = self._table.scores_of(array, item_ids)
        return [None if not np.isfinite(score) else float(score) for score in scores.tolist()]

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """Ids of stored items with these content hashes (resumed runs skip them)."""
        return self._metadata.ids_of_hashes(hashes)

    @property
    def journal(self) -> SourceJournal:
        """The finished-source journal of ingest runs, kept in this index's SQLite file."""
        return self._metadata

    def check_model(self, codebooks: npt.NDArray[np.floating]) -> None:
        """Raise IndexDirectoryError unless ``codebooks`` are exactly the ones the codes use."""
        if (
            codebook_fingerprint(np.asarray(codebooks, dtype=np.float32))
            != self._manifest.codebook_fingerprint
        ):
            raise IndexDirectoryError(
                f"the model's codebooks differ from those of the index in {self.directory}"
            )

    @property
    def card(self) -> dict[str, Any]:
        card: dict[str, Any] = json.loads((self.directory / CARD).read_text())
        return card

    @property
    def checkpoint_path(self) -> Path | None:
        path = self.directory / CHECKPOINT
        return path if path.exists() else None

    def __len__(self) -> int:
        with self._lock.reading():
            return len(self._table)

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot the manifest on disk commits (None before the first flush)."""
        return self._manifest.snapshot

    @property
    def unsaved_changes(self) -> int:
        """Adds and removals not yet in the FAISS snapshot (replayed from SQLite on open).

        A cheap read without locks, for deciding when to `flush`; `stats()` reports the same.
        """
        return self._unsaved

    def slide_rows(self) -> list[SlideRow]:
        """Every item's id, packed code, group, slide id, archive, source and label (SQLite, the
        source of truth): `indexer.index.slide_archive` builds the index's slides from them."""
        return self._metadata.slide_rows()

    def content_state(self) -> tuple[int, int, int]:
        """Live items, tombstones and the last id of the searchable table: changes whenever
        items are added, removed or compacted, and costs no SQL read (ids are never reused)."""
        with self._lock.reading():
            return len(self._table), self._table.tombstones, self._table.last_id

    def stats(self) -> IndexStats:
        with self._lock.reading():
            items, tombstones = len(self._table), self._table.tombstones
            memory, unsaved = self._table.memory_bytes(), self._unsaved
        return IndexStats(
            directory=str(self.directory),
            items=items,
            labels=self._metadata.counts_by("label"),
            datasets=self._metadata.counts_by("dataset"),
            num_codebooks=self.num_codebooks,
            codebook_size=self.codebook_size,
            codeword_dim=self.codeword_dim,
            code_bytes=self._manifest.code_size,
            codebook_fingerprint=self._manifest.codebook_fingerprint,
            unsaved_changes=unsaved,
            tombstones=tombstones,
            memory_bytes=memory,
            card=self.card,
            second_stage=self.second_stage_stats(),
        )


# ---- directory checks ------------------------------------------------------------------------


def _read_manifest(directory: Path) -> IndexManifest:
    try:
        return read_manifest(directory)
    except IndexDirectoryError as error:
        if (directory / METADATA).is_file():
            raise IndexDirectoryError(with_repair_hint(str(error), directory)) from error
        raise


def _check_model_files(directory: Path, manifest: IndexManifest) -> None:
    """The database, card and checkpoint the manifest recorded: SQLite cannot vouch for these."""
    for name in (METADATA, CARD):
        if not (directory / name).is_file():
            raise IndexDirectoryError(with_repair_hint(f"{directory} has no {name}", directory))
    if sha256_of(directory / CARD) != manifest.card_sha256:
        raise IndexDirectoryError(
            with_repair_hint(f"{CARD} is not the model card this index was built with", directory)
        )
    expected = manifest.checkpoint_sha256
    if expected is not None:
        if not (directory / CHECKPOINT).is_file():
            raise IndexDirectoryError(
                with_repair_hint(f"{directory} has no {CHECKPOINT}", directory)
            )
        if sha256_of(directory / CHECKPOINT) != expected:
            raise IndexDirectoryError(
                with_repair_hint(
                    f"{CHECKPOINT} is not the checkpoint the codes came from", directory
                )
            )


def _codebooks_from_metadata(
    directory: Path, metadata: MetadataStore, manifest: IndexManifest
) -> FloatArray:
    properties = metadata.properties()
    if "codebooks" not in properties:
        raise IndexDirectoryError(
            with_repair_hint(f"{METADATA} holds no codebooks: not an index database", directory)
        )
    shape = tuple(json.loads(properties["codebooks_shape"]))
    codebooks = np.frombuffer(properties["codebooks"], dtype=np.float32).reshape(shape).copy()
    fingerprint = codebook_fingerprint(codebooks)
    if fingerprint != manifest.codebook_fingerprint:
        raise IndexDirectoryError(
            with_repair_hint(
                f"codebook fingerprint of {METADATA} ({fingerprint[:12]}) differs from "
                f"{MANIFEST} ({manifest.codebook_fingerprint[:12]}) in {directory}",
                directory,
            )
        )
    if str(properties.get("code_size")) != str(manifest.code_size):
        raise IndexDirectoryError(
            with_repair_hint(
                f"code size of {METADATA} ({properties.get('code_size')}) differs from "
                f"{MANIFEST} ({manifest.code_size})",
                directory,
            )
        )
    return codebooks


def _second_stage_record(
    card: Mapping[str, Any], settings: SecondStageSettings
) -> SecondStageRecord:
    """The manifest's record of a second stage over the card's input vectors."""
    dim = card.get("input_dim")
    if not isinstance(dim, int) or dim <= 0:
        raise IndexInputError(
            "a second stage re-ranks by the vectors an index is built from, and only a feature "
            "index (a model card with input_dim) keeps them: an image index has none"
        )
    return SecondStageRecord(kind=settings.kind, dim=dim, shortlist_factor=settings.factor)


def _geometry_of(card: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "backbone",
        "num_codebooks",
        "codebook_size",
        "codeword_dim",
        "input_size",
        "code_version",
    )
    return {key: card[key] for key in keys if key in card}


def _spans(blocks: Sequence[FeatureRows]) -> list[tuple[int, int]]:
    """(start, stop) of each block's rows in the rows of all of them, one after another."""
    bounds = np.cumsum([0, *(len(block) for block in blocks)]).tolist()
    return list(itertools.pairwise(bounds))


def checked_vectors(vectors: npt.NDArray[np.floating], dim: int, what: str) -> FloatArray:
    """``vectors`` as float32 (N, dim), refused with `IndexInputError` if misshapen or not finite.

    One check for every index type (`ArchiveIndex`, `ShardedIndex`), so both refuse alike.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise IndexInputError(
            f"{what} must have shape (N, {dim}) for this index, got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise IndexInputError(f"{what} contain NaN or infinite values")
    return array
