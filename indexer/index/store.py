"""`ArchiveIndex`: an index directory that a service can load in seconds and grow in place.

Directory contents (each file written to a temporary name, fsynced, then renamed):

- ``metadata.sqlite`` - the source of truth: every item with its packed code, the removal journal,
  the vocabulary of labels / datasets / groups, the codebooks and the finished-source journal.
- ``codes.faiss`` - snapshot of the codes as a FAISS ``IndexIDMap(IndexPQ)`` over the model's own
  codewords and our stable ids (readable by plain FAISS).
- ``columns.npz`` - snapshot of the filter columns (label, dataset, group vocabulary ids) in the
  order of ``codes.faiss``, so that opening never has to read every SQLite row.
- ``model.pt`` and ``model_card.json`` - the checkpoint the codes came from, and its card.
- ``manifest.json`` - written last: format version, counts, code geometry, codebook fingerprint,
  card key and the size + SHA-256 of every other file, so that parts that disagree are refused.

Items added or removed after the last snapshot are replayed from SQLite on open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import numpy.typing as npt

from indexer.index.codetable import NO_FILTER, NO_TERM, CodeTable, Columns, TermFilter
from indexer.index.locks import ReadWriteLock
from indexer.index.metadata import TERM_KINDS, FinishedSource, MetadataStore
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    assign_codes,
    check_codebooks,
    code_size_bytes,
    codebook_fingerprint,
    codebooks_of,
    flat_pq_index,
    pack_codes,
    packed_codes_of,
    unpack_codes,
)
from indexer.index.records import ItemRecord, NewItem
from model.atomic import atomic_write

__all__ = [
    "AddOutcome",
    "ArchiveIndex",
    "Hit",
    "IndexDirectoryError",
    "IndexStats",
    "ItemRecord",
    "NewItem",
    "SearchFilters",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CARD = "model_card.json"
CHECKPOINT = "model.pt"
CODES = "codes.faiss"
COLUMNS = "columns.npz"
METADATA = "metadata.sqlite"
# Compact the in-memory table once this share of its positions are tombstones.
_COMPACT_SHARE = 0.2


class IndexDirectoryError(RuntimeError):
    """An index directory that is missing, damaged, or whose parts disagree with each other."""


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
        manifest: dict[str, Any],
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

    # ---- creating and opening ------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, checkpoint_path: Path) -> ArchiveIndex:
        """Start an empty index for the model in ``checkpoint_path`` (copied in as ``model.pt``)."""
        from model import load_checkpoint

        model = load_checkpoint(Path(checkpoint_path))
        codebooks = model.codebooks().detach().cpu().numpy()
        return cls.create_from_codebooks(
            directory,
            codebooks,
            card=model.card.model_dump(mode="json"),
            card_key=model.card.compatibility_key(),
            checkpoint_path=Path(checkpoint_path),
        )

    @classmethod
    def create_from_codebooks(
        cls,
        directory: Path,
        codebooks: npt.NDArray[np.floating],
        card: Mapping[str, Any],
        card_key: Mapping[str, Any] | None = None,
        checkpoint_path: Path | None = None,
    ) -> ArchiveIndex:
        """Start an empty index from codebooks (M, K, d) already in hand.

        Without ``checkpoint_path`` the directory has no ``model.pt``: enough for benchmarks and
        tests on synthetic codes, not for a service that must embed queries.
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
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "num_codebooks": num_codebooks,
            "codebook_size": codebook_size,
            "codeword_dim": codeword_dim,
            "code_size": code_size_bytes(num_codebooks, codebook_size),
            "codebook_fingerprint": codebook_fingerprint(unit_codebooks),
            "card_key": dict(card_key) if card_key is not None else _geometry_of(card),
            "card_sha256": _sha256_bytes(card_bytes),
            "checkpoint_sha256": None
            if checkpoint_path is None
            else _sha256(directory / CHECKPOINT),
        }
        metadata = MetadataStore(directory / METADATA)
        metadata.set_properties(
            {
                "format_version": str(FORMAT_VERSION),
                "codebook_fingerprint": manifest["codebook_fingerprint"],
                "code_size": str(manifest["code_size"]),
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

        Raises IndexDirectoryError naming the first disagreement found.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        _check_side_files(directory, manifest)
        metadata = MetadataStore(directory / METADATA)
        try:
            codebooks = _codebooks_from_metadata(directory, metadata, manifest)
            index = cls(directory, codebooks, metadata, manifest)
            index._load_snapshot()
            index._replay_journal()
            index._check_counts()
        except BaseException:
            metadata.close()
            raise
        return index

    def _load_snapshot(self) -> None:
        snapshot = self._manifest["snapshot"]
        for name in (CODES, COLUMNS):
            _check_file(self.directory, name, snapshot[name])
        wrapper: Any = faiss.read_index(str(self.directory / CODES))
        inner = faiss.downcast_index(wrapper.index)
        ids = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
        if not isinstance(inner, faiss.IndexPQ) or wrapper.ntotal != snapshot["items"]:
            raise IndexDirectoryError(
                f"{CODES} holds {wrapper.ntotal} codes but {MANIFEST} says {snapshot['items']}"
            )
        if inner.code_size != self._manifest["code_size"]:
            raise IndexDirectoryError(
                f"{CODES} has {inner.code_size}-byte codes, {MANIFEST} says "
                f"{self._manifest['code_size']}"
            )
        if codebook_fingerprint(codebooks_of(inner)) != self._manifest["codebook_fingerprint"]:
            raise IndexDirectoryError(f"the codebooks in {CODES} are not the model's codebooks")
        codes = unpack_codes(packed_codes_of(inner), self.num_codebooks, self.codebook_size)
        self._table.reset(codes, ids, self._read_columns(len(ids)))

    def _read_columns(self, expected: int) -> Columns:
        with np.load(self.directory / COLUMNS, allow_pickle=False) as arrays:
            columns = Columns(arrays["labels"], arrays["datasets"], arrays["groups"])
        for name, values in zip(
            TERM_KINDS, (columns.labels, columns.datasets, columns.groups), strict=True
        ):
            if len(values) != expected:
                raise IndexDirectoryError(
                    f"{COLUMNS} has {len(values)} {name} entries for {expected} codes in {CODES}"
                )
        return columns

    def _replay_journal(self) -> None:
        snapshot = self._manifest["snapshot"]
        rows = list(self._metadata.rows_after(snapshot["last_item_id"]))
        if rows:
            packed = np.frombuffer(b"".join(row.code for row in rows), dtype=np.uint8)
            codes = unpack_codes(
                packed.reshape(len(rows), -1), self.num_codebooks, self.codebook_size
            )
            ids = np.array([row.id for row in rows], dtype=np.int64)
            terms = Columns(
                *(
                    np.array([self._term(kind, getattr(row, kind)) for row in rows], dtype=np.int32)
                    for kind in TERM_KINDS
                )
            )
            self._table.append(codes, ids, terms)
        removed = self._metadata.removals_after(snapshot["last_removal_seq"])
        self._table.remove(removed)
        self._unsaved = len(rows) + len(removed)
        if self._unsaved:
            log.info(
                "replayed %d adds and %d removals newer than the snapshot", len(rows), len(removed)
            )

    def _term(self, kind: str, name: str | None) -> int:
        term = self._metadata.term_id(kind, name)
        return NO_TERM if term is None else term

    def _check_counts(self) -> None:
        stored = self._metadata.count()
        if stored != len(self._table):
            raise IndexDirectoryError(
                f"{METADATA} holds {stored} items but {CODES} plus the journal give "
                f"{len(self._table)}: the snapshot does not belong to this metadata"
            )

    # ---- changes -------------------------------------------------------------------------------

    def add(
        self, descriptors: npt.NDArray[np.floating], records: Sequence[NewItem]
    ) -> list[AddOutcome]:
        """Add items from their (N, M*d) descriptors; codes come from the model's codebooks.

        Duplicates (same content hash, stored or earlier in this call) are not added again.
        Durable when it returns.
        """
        array = self._checked_vectors(descriptors, "descriptors")
        return self.add_codes(assign_codes(array, self.codebooks), records)

    def add_codes(
        self, codes: npt.NDArray[np.integer], records: Sequence[NewItem]
    ) -> list[AddOutcome]:
        """Add items whose (N, M) codes were already assigned with this index's codebooks."""
        code_array = np.asarray(codes)
        if code_array.shape != (len(records), self.num_codebooks):
            raise ValueError(
                f"expected codes of shape ({len(records)}, {self.num_codebooks}), "
                f"got {code_array.shape}"
            )
        if code_array.size and (code_array.min() < 0 or code_array.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        small: CodeArray = code_array.astype(np.uint8)
        packed = pack_codes(small, self.codebook_size)
        with self._writer:
            result = self._metadata.insert(records, [row.tobytes() for row in packed])
            added = np.array(
                [i for i, new in enumerate(result.new_ids) if new is not None], dtype=np.intp
            )
            terms = Columns(*(np.array(result.term_ids[k], dtype=np.int32) for k in TERM_KINDS))
            with self._lock.writing():
                self._table.append(
                    small[added],
                    np.array([result.new_ids[i] for i in added], dtype=np.int64),
                    terms,
                )
            self._unsaved += len(added)
        return [
            AddOutcome(new, duplicate)
            for new, duplicate in zip(result.new_ids, result.duplicate_of, strict=True)
        ]

    def remove(self, item_ids: Sequence[int]) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""
        with self._writer:
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
        """Write the FAISS and column snapshot, then the manifest that vouches for them."""
        with self._flush_lock:
            with self._writer, self._lock.writing():
                self._table.compact()
                ids, codes, columns = self._table.live_arrays()
                last_item_id = self._table.last_id
                last_removal_seq = self._metadata.last_removal_seq()
                unsaved_before = self._unsaved
            snapshot = {
                "items": len(ids),
                "last_item_id": max(
                    last_item_id, self._manifest.get("snapshot", {}).get("last_item_id", 0)
                ),
                "last_removal_seq": last_removal_seq,
                CODES: self._write_codes(ids, codes),
                COLUMNS: self._write_columns(columns),
            }
            self._manifest = {**self._manifest, "snapshot": snapshot}
            manifest_bytes = json.dumps(self._manifest, indent=2, sort_keys=True).encode()
            atomic_write(self.directory / MANIFEST, lambda path: path.write_bytes(manifest_bytes))
            with self._writer:
                self._unsaved -= unsaved_before

    def _write_codes(self, ids: IdArray, codes: CodeArray) -> dict[str, Any]:
        wrapper = faiss.IndexIDMap(flat_pq_index(self.codebooks))
        if len(ids):
            wrapper.add_sa_codes(pack_codes(codes, self.codebook_size), ids)
        atomic_write(self.directory / CODES, lambda path: faiss.write_index(wrapper, str(path)))
        return _file_entry(self.directory / CODES)

    def _write_columns(self, columns: Columns) -> dict[str, Any]:
        def write(path: Path) -> None:
            with path.open("wb") as stream:
                np.savez(
                    stream, labels=columns.labels, datasets=columns.datasets, groups=columns.groups
                )

        atomic_write(self.directory / COLUMNS, write)
        return _file_entry(self.directory / COLUMNS)

    def close(self) -> None:
        """Flush if anything changed since the last snapshot, then release the database."""
        if self._unsaved:
            self.flush()
        self._metadata.close()

    def __enter__(self) -> ArchiveIndex:
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
    ) -> list[list[Hit]]:
        """The k best items per query by exact ADC (queries never quantised), best first.

        Filtered searches still return k hits whenever k eligible items exist.
        """
        scores, ids = self.search_arrays(queries, k, filters)
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
        self, queries: npt.NDArray[np.floating], k: int, filters: SearchFilters | None = None
    ) -> tuple[FloatArray, IdArray]:
        """`search` as (Q, k) arrays of scores and ids, no result objects: for batches.

        Each row is best first, ties in id order; a row ends in score -inf and id -1 where fewer
        than k items are eligible.
        """
        array = self._checked_vectors(queries, "queries")
        with self._lock.reading():
            term_filter = self._term_filter(filters)
            eligible = (
                self._table.nothing_eligible()
                if term_filter is None
                else self._table.eligible(term_filter)
            )
            return self._table.search(array, k, eligible)

    def _term_filter(self, filters: SearchFilters | None) -> TermFilter | None:
        """Vocabulary ids of the filter; None when a required label or dataset was never stored."""
        if filters is None:
            return NO_FILTER
        label = self._metadata.term_id("label", filters.label)
        dataset = self._metadata.term_id("dataset", filters.dataset)
        if (filters.label is not None and label is None) or (
            filters.dataset is not None and dataset is None
        ):
            return None
        return TermFilter(label, dataset, self._metadata.term_id("group", filters.exclude_group))

    def _checked_vectors(self, vectors: npt.NDArray[np.floating], what: str) -> FloatArray:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.descriptor_dim:
            raise ValueError(
                f"{what} must have shape (N, {self.descriptor_dim}) for this index, "
                f"got {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return array

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

    def finished_source(self, source: str) -> str | None:
        """The file hash recorded when every tile of ``source`` was indexed, or None."""
        return self._metadata.finished_source(source)

    def source_with_hash(self, file_hash: str) -> str | None:
        """A finished source whose file had this hash, or None."""
        return self._metadata.source_with_hash(file_hash)

    def mark_sources_finished(self, finished: Sequence[FinishedSource]) -> None:
        """Journal that every tile of these sources is indexed, so a resumed run skips them."""
        self._metadata.mark_sources_finished(finished)

    def check_model(self, codebooks: npt.NDArray[np.floating]) -> None:
        """Raise IndexDirectoryError unless ``codebooks`` are exactly the ones the codes use."""
        if (
            codebook_fingerprint(np.asarray(codebooks, dtype=np.float32))
            != self._manifest["codebook_fingerprint"]
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
    def unsaved_changes(self) -> int:
        """Adds and removals not yet in the FAISS snapshot (replayed from SQLite on open).

        A cheap read without locks, for deciding when to `flush`; `stats()` reports the same.
        """
        return self._unsaved

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
            code_bytes=int(self._manifest["code_size"]),
            codebook_fingerprint=str(self._manifest["codebook_fingerprint"]),
            unsaved_changes=unsaved,
            tombstones=tombstones,
            memory_bytes=memory,
            card=self.card,
        )


# ---- directory checks ------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise IndexDirectoryError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexDirectoryError(f"{directory} has no {MANIFEST}: not an index directory")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise IndexDirectoryError(f"{path} is unreadable: {error}") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexDirectoryError(
            f"{path} has format version {manifest.get('format_version')!r}; this program reads "
            f"version {FORMAT_VERSION}"
        )
    missing = [
        key for key in ("snapshot", "codebook_fingerprint", "code_size") if key not in manifest
    ]
    if missing:
        raise IndexDirectoryError(f"{path} lacks {', '.join(missing)}")
    return manifest


def _check_side_files(directory: Path, manifest: dict[str, Any]) -> None:
    for name in (METADATA, CARD, CODES, COLUMNS):
        if not (directory / name).is_file():
            raise IndexDirectoryError(f"{directory} has no {name}")
    if _sha256(directory / CARD) != manifest["card_sha256"]:
        raise IndexDirectoryError(f"{CARD} is not the model card this index was built with")
    expected = manifest.get("checkpoint_sha256")
    if expected is not None:
        if not (directory / CHECKPOINT).is_file():
            raise IndexDirectoryError(f"{directory} has no {CHECKPOINT}")
        if _sha256(directory / CHECKPOINT) != expected:
            raise IndexDirectoryError(f"{CHECKPOINT} is not the checkpoint the codes came from")


def _codebooks_from_metadata(
    directory: Path, metadata: MetadataStore, manifest: dict[str, Any]
) -> FloatArray:
    properties = metadata.properties()
    if "codebooks" not in properties:
        raise IndexDirectoryError(f"{METADATA} holds no codebooks: not an index database")
    shape = tuple(json.loads(properties["codebooks_shape"]))
    codebooks = np.frombuffer(properties["codebooks"], dtype=np.float32).reshape(shape).copy()
    fingerprint = codebook_fingerprint(codebooks)
    if fingerprint != manifest["codebook_fingerprint"]:
        raise IndexDirectoryError(
            f"codebook fingerprint of {METADATA} ({fingerprint[:12]}) differs from {MANIFEST} "
            f"({str(manifest['codebook_fingerprint'])[:12]}) in {directory}"
        )
    if str(properties.get("code_size")) != str(manifest["code_size"]):
        raise IndexDirectoryError(
            f"code size of {METADATA} ({properties.get('code_size')}) differs from {MANIFEST} "
            f"({manifest['code_size']})"
        )
    return codebooks


def _check_file(directory: Path, name: str, entry: Mapping[str, Any]) -> None:
    path = directory / name
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise IndexDirectoryError(
            f"{name} has {size} bytes but {MANIFEST} recorded {entry['bytes']}: the snapshot is "
            "damaged or from another write"
        )
    if _sha256(path) != entry["sha256"]:
        raise IndexDirectoryError(f"{name} does not match the checksum in {MANIFEST}")


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


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
