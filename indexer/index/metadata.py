"""SQLite metadata of an archive index: the source of truth for every item and its code.

Items come in two shapes that every read returns alike: a row of ``items`` per item (images,
tiles, anything added one by one), and the row blocks of feature archives, one record per
stretch of a file's rows (`indexer.index.block_table`; why: `indexer.index.row_blocks`). Both
take their ids from the one AUTOINCREMENT sequence of ``items``.

Every item row holds its packed PQ code, so an add is durable once its transaction commits
(WAL journal, ``synchronous=FULL``) even if the FAISS snapshot on disk is older. Removals are
journalled in their own table so that they too can be replayed onto an older snapshot.
Ids come from AUTOINCREMENT: they only grow and are never reused, which keeps them stable.

One connection is shared by the threads of a process and guarded by a mutex: metadata reads are
short, and SQLite's own locking then only has to deal with other processes.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from indexer.index import block_table
from indexer.index.block_table import Block, BlockTable
from indexer.index.errors import IndexDirectoryError, IndexInputError, with_repair_hint
from indexer.index.records import ItemRecord, NewItem
from indexer.index.row_blocks import FeatureRows

TERM_KINDS = ("label", "dataset", "group")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS terms (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, UNIQUE (kind, name)
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code BLOB NOT NULL,
    source TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    label TEXT, grp TEXT, dataset TEXT,
    tile_x INTEGER, tile_y INTEGER, tile_w INTEGER, tile_h INTEGER,
    source_w INTEGER, source_h INTEGER,
    thumbnail BLOB,
    extra TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL,
    archive TEXT
);
CREATE TABLE IF NOT EXISTS removals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER NOT NULL, removed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, file_hash TEXT NOT NULL, items INTEGER NOT NULL,
    skipped INTEGER NOT NULL, finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sources_by_hash ON sources (file_hash);
CREATE TABLE IF NOT EXISTS fine_codes (item_id INTEGER PRIMARY KEY, code BLOB NOT NULL);
"""

# Columns added after the first release, with their type: opening an older database adds them.
# `archive` is the name (never the path) of the archive folder an item's relative source is in;
# rows written before it have NULL there and may hold absolute sources.
_ADDED_ITEM_COLUMNS = {"archive": "TEXT"}
_RECORD_COLUMNS = (
    "id, added_at, source, content_hash, label, grp, dataset, tile_x, tile_y, tile_w, tile_h, "
    "source_w, source_h, extra, archive"
)
_INSERT_ITEM = (
    "INSERT INTO items (id, code, source, content_hash, label, grp, dataset, tile_x, tile_y, "
    "tile_w, tile_h, source_w, source_h, thumbnail, extra, added_at, archive) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One encoder for every row's `extra`: json.dumps(..., sort_keys=True) builds a new one per call
# (3.9 us a row against 2.7 us), and the text is the same.
_EXTRA_JSON = json.JSONEncoder(sort_keys=True)
# SQLite's default limit on host parameters is 32766; stay far below it.
_IN_CLAUSE_CHUNK = 900


class FinishedSource(NamedTuple):
    """A source image all of whose tiles are stored: what a resumed run needs to skip it."""

    source: str
    file_hash: str
    items: int
    skipped: int


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Per input item: its new id, or the id of the item it duplicates (exactly one is set)."""

    new_ids: list[int | None]
    duplicate_of: list[int | None]
    term_ids: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class CodeRow:
    """What the in-memory table needs of an item: id, packed code and filter terms."""

    id: int
    code: bytes
    label: str | None
    group: str | None
    dataset: str | None


# (id, packed code, group, slide id, archive, source, label): `MetadataStore.slide_rows`.
SlideRow = tuple[int, bytes, str | None, str | None, str | None, str, str | None]


@dataclass(frozen=True, slots=True)
class RowsResult:
    """The ids given to each block's rows, and the vocabulary ids of every row, blocks in order."""

    ids: list[npt.NDArray[np.int64]]
    term_ids: dict[str, list[int]]


class MetadataStore:
    """The ``metadata.sqlite`` file of an index directory."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the database; IndexDirectoryError if SQLite cannot read it."""
        self.path = path
        self._mutex = threading.Lock()
        try:
            self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit that returned survives power loss: what "acknowledged" means.
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
            self._connection.executescript(block_table.SCHEMA)
            self._blocks = BlockTable(self._connection)
            self._add_missing_columns()
            self._terms = self._load_terms()
        except sqlite3.DatabaseError as error:
            raise IndexDirectoryError(
                with_repair_hint(f"{path} is not a readable SQLite database: {error}", path.parent)
            ) from error

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._connection.execute("PRAGMA table_info(items)")}
        for name, kind in _ADDED_ITEM_COLUMNS.items():
            if name not in present:
                self._connection.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._mutex:
            self._connection.close()

    # ---- properties and vocabulary -------------------------------------------------------------

    def set_properties(self, values: dict[str, str | bytes]) -> None:
        with self._mutex, self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)", values.items()
            )

    def properties(self) -> dict[str, Any]:
        with self._mutex:
            return dict(self._connection.execute("SELECT key, value FROM properties"))

    def term_id(self, kind: str, name: str | None) -> int | None:
        """The vocabulary id of a label, dataset or group name; None if never stored."""
        return None if name is None else self._terms.get((kind, name))

    def _load_terms(self) -> dict[tuple[str, str], int]:
        rows = self._connection.execute("SELECT kind, name, id FROM terms")
        return {(kind, name): term for kind, name, term in rows}

    def _ensure_term(self, kind: str, name: str | None) -> int:
        if name is None:
            return -1
        known = self._terms.get((kind, name))
        if known is not None:
            return known
        cursor = self._connection.execute(
            "INSERT INTO terms (kind, name) VALUES (?, ?)", (kind, name)
        )
        assert cursor.lastrowid is not None
        self._terms[(kind, name)] = cursor.lastrowid
        return cursor.lastrowid

    # ---- writes --------------------------------------------------------------------------------

    def insert(
        self,
        items: Sequence[NewItem],
        codes: Sequence[bytes],
        item_ids: Sequence[int] | None = None,
        fine_codes: Sequence[bytes] | None = None,
    ) -> InsertResult:
        """Insert the items not already present (by content hash) in one durable transaction.

        ``item_ids`` gives each new item its id instead of AUTOINCREMENT's next one: a sharded
        index allocates ids for all its shards (indexer/index/shards.py). ``fine_codes``: each
        item's second-stage code (`indexer.index.fine_codes`), stored in the same transaction,
        so an acknowledged add keeps it through a crash.
        """
        if len(items) != len(codes) or (fine_codes is not None and len(fine_codes) != len(items)):
            raise ValueError(f"{len(items)} items but {len(codes)} codes")
        now = time.time()
        with self._mutex:
            known = self._ids_of_hashes([item.content_hash for item in items])
            terms_before = dict(self._terms)
            try:
                with self._transaction():
                    new_ids, duplicate_of = self._allocate_ids(items, known, item_ids)
                    fresh = [n for n, item_id in enumerate(new_ids) if item_id is not None]
                    # One executemany of prepared tuples, terms resolved once per name: on the
                    # 147k rows of benchmarks/indexer/feature_indexing.py 18 us a row against
                    # 23 us for one execute per row; SQLite's own B-tree work is most of it.
                    self._connection.executemany(
                        _INSERT_ITEM, _item_rows(items, codes, new_ids, fresh, now)
                    )
                    if fine_codes is not None:
                        self._connection.executemany(
                            "INSERT INTO fine_codes (item_id, code) VALUES (?, ?)",
                            [(new_ids[n], fine_codes[n]) for n in fresh],
                        )
                    term_ids = self._term_ids_of([items[n] for n in fresh])
            except BaseException:
                self._terms = terms_before
                raise
        return InsertResult(new_ids, duplicate_of, term_ids)

    def _allocate_ids(
        self,
        items: Sequence[NewItem],
        known: dict[str, int],
        item_ids: Sequence[int] | None,
    ) -> tuple[list[int | None], list[int | None]]:
        """Per item, its new id or the stored (or earlier in ``items``) item it duplicates.

        Without ``item_ids`` the ids are AUTOINCREMENT's: one above the largest it ever gave
        (the transaction holds the write lock, so nobody else allocates meanwhile).
        """
        next_id = self._next_autoincrement_id() if item_ids is None else 0
        new_ids: list[int | None] = []
        duplicate_of: list[int | None] = []
        for number, item in enumerate(items):
            existing = known.get(item.content_hash)
            if existing is not None:
                new_ids.append(None)
                duplicate_of.append(existing)
                continue
            if item_ids is None:
                item_id, next_id = next_id, next_id + 1
            else:
                item_id = int(item_ids[number])
            known[item.content_hash] = item_id
            new_ids.append(item_id)
            duplicate_of.append(None)
        return new_ids, duplicate_of

    def _next_autoincrement_id(self) -> int:
        """The id AUTOINCREMENT would give the next row: above every id ever allocated."""
        sequence = self._connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'items'"
        ).fetchone()
        largest = self._connection.execute("SELECT MAX(id) FROM items").fetchone()[0]
        in_blocks = self._blocks.largest_id()
        return max(0 if sequence is None else int(sequence[0]), int(largest or 0), in_blocks) + 1

    def _term_ids_of(self, items: Sequence[NewItem]) -> dict[str, list[int]]:
        """Vocabulary ids of each item's label, dataset and group, new names stored once each."""
        return self._term_ids_of_names(
            {
                "label": [item.label for item in items],
                "dataset": [item.dataset for item in items],
                "group": [item.group for item in items],
            }
        )

    def _term_ids_of_names(self, names: dict[str, list[str | None]]) -> dict[str, list[int]]:
        term_ids: dict[str, list[int]] = {}
        for kind in TERM_KINDS:
            ids = {name: self._ensure_term(kind, name) for name in dict.fromkeys(names[kind])}
            term_ids[kind] = list(map(ids.__getitem__, names[kind]))
        return term_ids

    def insert_rows(
        self,
        blocks: Sequence[FeatureRows],
        codes: Sequence[bytes],
        fine_codes: Sequence[bytes] | None = None,
    ) -> RowsResult:
        """Store feature rows a block per record, in one durable transaction; ids follow the
        items' sequence. ``codes``: each block's packed codes, one after another; ``fine_codes``:
        each block's second-stage codes likewise. Rows are not looked up by content: a caller
        leaves out the rows it already stored (`stored_rows`)."""
        if len(codes) != len(blocks) or (fine_codes is not None and len(fine_codes) != len(blocks)):
            raise ValueError(f"{len(blocks)} blocks but {len(codes)} code blocks")
        now = time.time()
        with self._mutex:
            terms_before = dict(self._terms)
            try:
                with self._transaction():
                    first = self._next_autoincrement_id()
                    ids: list[npt.NDArray[np.int64]] = []
                    for block in blocks:
                        ids.append(np.arange(first, first + len(block), dtype=np.int64))
                        first += len(block)
                    self._blocks.insert(blocks, ids, codes, fine_codes, now)
                    self._advance_sequence(first - 1)
                    term_ids = self._term_ids_of_names(
                        {
                            "label": [label for block in blocks for label in block.labels],
                            "dataset": [name for b in blocks for name in [b.dataset] * len(b)],
                            "group": [group for block in blocks for group in block.groups],
                        }
                    )
            except BaseException:
                self._terms = terms_before
                raise
        return RowsResult(ids, term_ids)

    def _advance_sequence(self, last_id: int) -> None:
        """Make AUTOINCREMENT's sequence reach ``last_id``: block rows use its ids too."""
        updated = self._connection.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'items'", (last_id,)
        ).rowcount
        if not updated:
            self._connection.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('items', ?)", (last_id,)
            )

    def stored_rows(self, journal_key: str) -> set[int]:
        """Row numbers of the file ``journal_key`` stored as feature rows (live ones)."""
        with self._mutex:
            return self._blocks.stored_rows(journal_key)

    def delete(self, item_ids: Sequence[int]) -> list[int]:
        """Delete the given items and journal the removals; returns the ids actually deleted."""
        now = time.time()
        with self._mutex, self._transaction():
            in_blocks = self._blocks.present(item_ids)
            self._blocks.remove(in_blocks)
            present = self._present_ids(item_ids)
            for chunk in _chunks(present):
                marks = ",".join("?" * len(chunk))
                self._connection.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
                self._connection.execute(
                    f"DELETE FROM fine_codes WHERE item_id IN ({marks})", chunk
                )
            present = sorted(present + in_blocks)
            self._connection.executemany(
                "INSERT INTO removals (item_id, removed_at) VALUES (?, ?)",
                [(item_id, now) for item_id in present],
            )
        return present

    def mark_sources_finished(self, finished: Sequence[FinishedSource]) -> None:
        """Journal that every tile of these source images has been dealt with (one commit)."""
        if not finished:
            return
        now = time.time()
        with self._mutex, self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO sources (source, file_hash, items, skipped, finished_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(*entry, now) for entry in finished],
            )

    # ---- reads ---------------------------------------------------------------------------------

    def finished_source(self, source: str) -> str | None:
        """The file hash recorded when ``source`` was finished, or None."""
        with self._mutex:
            row = self._connection.execute(
                "SELECT file_hash FROM sources WHERE source = ?", (source,)
            ).fetchone()
        return None if row is None else str(row[0])

    def source_with_hash(self, file_hash: str) -> str | None:
        """A finished source whose file had this hash (a duplicate file elsewhere), or None."""
        with self._mutex:
            row = self._connection.execute(
                "SELECT source FROM sources WHERE file_hash = ? LIMIT 1", (file_hash,)
            ).fetchone()
        return None if row is None else str(row[0])

    def ids_of_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        with self._mutex:
            return self._ids_of_hashes(hashes)

    def count(self) -> int:
        return self.count_and_id_sum()[0]

    def counts_by(self, column: str) -> dict[str | None, int]:
        if column not in ("label", "dataset", "grp"):
            raise IndexInputError(f"cannot count by {column!r}")
        with self._mutex:
            rows = self._connection.execute(
                f"SELECT {column}, COUNT(*) FROM items GROUP BY {column}"
            )
            counts: Counter[str | None] = Counter({name: int(count) for name, count in rows})
            for block, live in self._blocks.after(0):
                counts.update(_block_column(block.rows, column, live))
        return dict(sorted(counts.items(), key=lambda entry: (entry[0] is not None, entry[0])))

    def count_and_id_sum(self) -> tuple[int, int]:
        """How many items there are and the sum of their ids: a cheap fingerprint of the id set."""
        with self._mutex:
            count, total = self._connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(id), 0) FROM items"
            ).fetchone()
            in_blocks, block_sum = self._blocks.count_and_id_sum()
        return int(count) + in_blocks, int(total) + block_sum

    def slide_rows(self) -> list[SlideRow]:
        """(id, packed code, group, ``extra.slide_id``, archive, source, label) of every item, in
        id order: what slide search needs to know which slide each item belongs to."""
        with self._mutex:
            rows = self._connection.execute(
                "SELECT id, code, grp, json_extract(extra, '$.slide_id'), archive, source, label "
                "FROM items ORDER BY id"
            ).fetchall()
            items: list[SlideRow] = [
                (int(a), bytes(b), c, d if isinstance(d, str) else None, e, f, g)
                for a, b, c, d, e, f, g in rows
            ]
            in_blocks = list(_block_slide_rows(self._blocks.after(0, codes=True)))
        return _merged_by_id(items, in_blocks, lambda row: row[0])

    def last_allocated_id(self) -> int:
        """The largest id SQLite ever gave an item (deleted ones included); 0 before the first."""
        with self._mutex:
            row = self._connection.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'items'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    def last_removal_seq(self) -> int:
        with self._mutex:
            return int(
                self._connection.execute("SELECT COALESCE(MAX(seq), 0) FROM removals").fetchone()[0]
            )

    def rows_after(self, last_id: int) -> Iterator[CodeRow]:
        """Items added after the snapshot that held ids up to ``last_id``, in id order."""
        with self._mutex:
            rows = [
                CodeRow(*row)
                for row in self._connection.execute(
                    "SELECT id, code, label, grp, dataset FROM items WHERE id > ? ORDER BY id",
                    (last_id,),
                )
            ]
            in_blocks = list(_block_code_rows(self._blocks.after(last_id, codes=True)))
        return iter(_merged_by_id(rows, in_blocks, lambda row: row.id))

    def fine_codes_after(self, last_id: int, dim: int) -> tuple[IdArray, npt.NDArray[np.uint8]]:
        """Second-stage codes of the live items with ids above ``last_id``, in id order."""
        with self._mutex:
            rows = self._connection.execute(
                "SELECT f.item_id, f.code FROM fine_codes f JOIN items i ON i.id = f.item_id "
                "WHERE f.item_id > ? ORDER BY f.item_id",
                (last_id,),
            ).fetchall()
            parts = [
                (block.ids[live], _fine_of(block.fine, dim)[live])
                for block, live in self._blocks.after(last_id, fine=True)
            ]
        ids = [np.array([row[0] for row in rows], dtype=np.int64)] + [p[0] for p in parts]
        codes = [_fine_of(b"".join(row[1] for row in rows), dim)] + [p[1] for p in parts]
        all_ids, all_codes = np.concatenate(ids), np.concatenate(codes)
        order = np.argsort(all_ids, kind="stable")
        return all_ids[order], np.ascontiguousarray(all_codes[order])

    def removals_after(self, seq: int) -> list[int]:
        with self._mutex:
            rows = self._connection.execute(
                "SELECT item_id FROM removals WHERE seq > ? ORDER BY seq", (seq,)
            )
            return [int(row[0]) for row in rows]

    def records(self, item_ids: Sequence[int]) -> dict[int, ItemRecord]:
        """Records (without thumbnails) of the given ids that exist."""
        found: dict[int, ItemRecord] = {}
        with self._mutex:
            for chunk in _chunks(list(item_ids)):
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM items WHERE id IN ({marks})", chunk
                )
                found.update((row[0], _record_from_row(row, None)) for row in rows)
            for item_id, (block, position) in self._blocks.locate(item_ids):
                found[item_id] = block.rows.record(position, item_id, block.added_at)
        return found

    def record(self, item_id: int) -> ItemRecord | None:
        with self._mutex:
            row = self._connection.execute(
                f"SELECT {_RECORD_COLUMNS}, thumbnail FROM items WHERE id = ?", (item_id,)
            ).fetchone()
            if row is None:
                located = list(self._blocks.locate([item_id]))
                if located:
                    ((_, (block, position)),) = located
                    return block.rows.record(position, item_id, block.added_at)
        return None if row is None else _record_from_row(row[:-1], row[-1])

    def thumbnail(self, item_id: int) -> bytes | None:
        with self._mutex:
            row = self._connection.execute(
                "SELECT thumbnail FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    # ---- helpers (caller holds the mutex) ------------------------------------------------------

    def _ids_of_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(dict.fromkeys(hashes))):
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT content_hash, id FROM items WHERE content_hash IN ({marks})", chunk
            )
            found.update((str(content_hash), int(item_id)) for content_hash, item_id in rows)
        return found

    def _present_ids(self, item_ids: Sequence[int]) -> list[int]:
        present: list[int] = []
        for chunk in _chunks(sorted({int(item_id) for item_id in item_ids})):
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)
            present.extend(int(row[0]) for row in rows)
        return sorted(present)

    class _Transaction:
        def __init__(self, connection: sqlite3.Connection) -> None:
            self._connection = connection

        def __enter__(self) -> None:
            # IMMEDIATE takes the write lock now, so another process cannot make us fail midway.
            self._connection.execute("BEGIN IMMEDIATE")

        def __exit__(self, kind: object, value: object, traceback: object) -> None:
            self._connection.execute("COMMIT" if kind is None else "ROLLBACK")

    def _transaction(self) -> MetadataStore._Transaction:
        return MetadataStore._Transaction(self._connection)


def integrity_problems(path: Path) -> list[str]:
    """What ``PRAGMA integrity_check`` finds wrong with the database at ``path``.

    Empty when it is sound; a database SQLite cannot open at all gives one message. (Opening
    replays a WAL journal a killed process left, as any open does; the check itself writes nothing.)
    """
    try:
        connection = sqlite3.connect(path)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        return [str(error)]
    messages = [str(row[0]) for row in rows]
    return [] if messages == ["ok"] else messages


def _item_rows(
    items: Sequence[NewItem],
    codes: Sequence[bytes],
    new_ids: Sequence[int | None],
    fresh: Sequence[int],
    now: float,
) -> list[tuple[Any, ...]]:
    """The `_INSERT_ITEM` parameters of the items at positions ``fresh``."""
    no_tile, no_size, encode = (None, None, None, None), (None, None), _EXTRA_JSON.encode
    return [
        (
            new_ids[n],
            codes[n],
            item.source,
            item.content_hash,
            item.label,
            item.group,
            item.dataset,
            *(item.tile or no_tile),
            *(item.source_size or no_size),
            item.thumbnail,
            encode(item.extra),
            now,
            item.archive,
        )
        for n, item in ((n, items[n]) for n in fresh)
    ]


IdArray = npt.NDArray[np.int64]
_Positions = npt.NDArray[np.intp]
_Row = TypeVar("_Row")


def _block_column(rows: FeatureRows, column: str, live: _Positions) -> list[str | None]:
    """The values of an ``items`` column (label, dataset, grp) for a block's live rows."""
    if column == "dataset":
        return [rows.dataset] * len(live)
    # Expanded once: a stored block's columns are runs, looked up row by row by bisection.
    values = list(rows.labels if column == "label" else rows.groups)
    return [values[n] for n in live.tolist()]


def _block_code_rows(blocks: Iterable[tuple[Block, _Positions]]) -> Iterator[CodeRow]:
    for block, live in blocks:
        assert block.codes is not None  # read with its codes
        size = len(block.codes) // len(block.ids)
        labels, groups, dataset = (
            list(block.rows.labels),
            list(block.rows.groups),
            block.rows.dataset,
        )
        for n in live.tolist():
            code = block.codes[n * size : (n + 1) * size]
            yield CodeRow(int(block.ids[n]), code, labels[n], groups[n], dataset)


def _block_slide_rows(blocks: Iterable[tuple[Block, _Positions]]) -> Iterator[SlideRow]:
    for block, live in blocks:
        assert block.codes is not None  # read with its codes
        size = len(block.codes) // len(block.ids)
        rows = block.rows
        groups, slides, labels = list(rows.groups), list(rows.slide_ids), list(rows.labels)
        for n in live.tolist():
            code = block.codes[n * size : (n + 1) * size]
            yield (
                int(block.ids[n]),
                code,
                groups[n],
                slides[n],
                rows.archive,
                rows.source,
                labels[n],
            )


def _fine_of(codes: bytes | None, dim: int) -> npt.NDArray[np.uint8]:
    if not codes:
        return np.zeros((0, dim), dtype=np.uint8)
    return np.frombuffer(codes, dtype=np.uint8).reshape(-1, dim)


def _merged_by_id(
    items: list[_Row], blocks: list[_Row], id_of: Callable[[_Row], int]
) -> list[_Row]:
    """Rows of ``items`` and of row blocks, each already in id order, as one list in id order."""
    if not items or not blocks:
        return items or blocks
    return list(heapq.merge(items, blocks, key=id_of))


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _IN_CLAUSE_CHUNK):
        yield values[start : start + _IN_CLAUSE_CHUNK]


def _record_from_row(row: Sequence[Any], thumbnail: bytes | None) -> ItemRecord:
    (item_id, added_at, source, content_hash, label, group, dataset, *rest) = row
    tile_x, tile_y, tile_w, tile_h, source_w, source_h, extra, archive = rest
    tile = None if tile_x is None else (tile_x, tile_y, tile_w, tile_h)
    size = None if source_w is None else (source_w, source_h)
    return ItemRecord(
        id=int(item_id),
        added_at=float(added_at),
        source=source,
        content_hash=content_hash,
        label=label,
        group=group,
        dataset=dataset,
        tile=tile,
        source_size=size,
        thumbnail=None if thumbnail is None else bytes(thumbnail),
        extra=json.loads(extra),
        archive=archive,
    )
