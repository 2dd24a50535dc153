"""The row blocks of ``metadata.sqlite``: feature rows stored a block per record.

`indexer.index.metadata.MetadataStore` owns the connection and its mutex and calls this table
with the mutex held, inside its transactions; this module only knows the SQL of blocks. Why
blocks: see `indexer.index.row_blocks`.

A block's rows take the ids ``first_id`` to ``last_id`` without a gap (they are allocated
together; ids only grow, so blocks never overlap and the block of an id is the one with the
largest ``first_id`` at or below it). ``row_blocks`` holds the encoded columns,
``row_block_codes`` the rows' packed codes and second-stage codes. A removed row stays in its
block and is listed in ``removed_rows``; every read leaves it out.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.index.row_blocks import FeatureRows, StoredBlock, decode_block, encode_block

IdArray = npt.NDArray[np.int64]

SCHEMA = """
CREATE TABLE IF NOT EXISTS row_blocks (
    first_id INTEGER PRIMARY KEY,
    last_id INTEGER NOT NULL,
    journal_key TEXT NOT NULL,
    added_at REAL NOT NULL,
    header TEXT NOT NULL,
    rows BLOB NOT NULL,
    coords BLOB
);
CREATE TABLE IF NOT EXISTS row_block_codes (
    first_id INTEGER PRIMARY KEY, codes BLOB NOT NULL, fine BLOB
);
CREATE INDEX IF NOT EXISTS row_blocks_by_file ON row_blocks (journal_key);
CREATE TABLE IF NOT EXISTS removed_rows (item_id INTEGER PRIMARY KEY);
"""
_INSERT = (
    "INSERT INTO row_blocks (first_id, last_id, journal_key, added_at, header, rows, coords) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# What a record needs. The codes and fine codes (200 KB a block with a second stage) are a table
# of their own, read only by the bulk reads that use them: beside them in one row, a record's
# columns cost SQLite a walk over the blobs' overflow pages (45 us a block, against 9 us).
_META_COLUMNS = "first_id, last_id, header, rows, coords, added_at"
_BLOCK_META_COLUMNS = "b.first_id, b.last_id, b.header, b.rows, b.coords, b.added_at"
# Rows of decoded blocks kept for record lookups (a search's hits often share blocks): a decoded
# row holds a few list slots and shares its strings with its run, about 40 bytes.
_CACHED_ROWS = 1 << 20


@dataclass(frozen=True, slots=True)
class Block:
    """A stored block, decoded: its rows' ids and columns, and its packed codes and fine codes
    when they were read (None otherwise, or no fine codes stored)."""

    first_id: int
    ids: IdArray
    rows: FeatureRows
    added_at: float
    codes: bytes | None = None
    fine: bytes | None = None

    def position_of(self, item_id: int) -> int | None:
        """Where ``item_id`` is among the block's rows (its ids run without a gap)."""
        position = item_id - self.first_id
        return position if 0 <= position < len(self.ids) else None


class BlockTable:
    """Reads and writes of the row blocks over a connection the caller guards."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._decoded: OrderedDict[int, Block] = OrderedDict()
        self._cached_rows = 0

    # ---- writes (inside the caller's transaction) ----------------------------------------------

    def insert(
        self,
        blocks: Sequence[FeatureRows],
        ids: Sequence[IdArray],
        codes: Sequence[bytes],
        fine: Sequence[bytes] | None,
        now: float,
    ) -> None:
        def block_params(n: int) -> tuple[object, ...]:
            block, block_ids = blocks[n], ids[n]
            if int(block_ids[-1]) - int(block_ids[0]) + 1 != len(block_ids):
                raise ValueError("a block's rows take ids without a gap")
            stored = encode_block(block)
            return (
                int(block_ids[0]),
                int(block_ids[-1]),
                block.journal_key,
                now,
                stored.header,
                stored.rows,
                stored.coords,
            )

        written = [n for n in range(len(blocks)) if len(ids[n])]
        self._connection.executemany(_INSERT, (block_params(n) for n in written))
        self._connection.executemany(
            "INSERT INTO row_block_codes (first_id, codes, fine) VALUES (?, ?, ?)",
            [(int(ids[n][0]), codes[n], None if fine is None else fine[n]) for n in written],
        )

    def remove(self, item_ids: Sequence[int]) -> None:
        self._connection.executemany(
            "INSERT OR IGNORE INTO removed_rows (item_id) VALUES (?)",
            [(int(item_id),) for item_id in item_ids],
        )

    # ---- reads ---------------------------------------------------------------------------------

    def largest_id(self) -> int:
        row = self._connection.execute("SELECT MAX(last_id) FROM row_blocks").fetchone()
        return int(row[0] or 0)

    def count_and_id_sum(self) -> tuple[int, int]:
        """Live rows and the sum of their ids."""
        count, total = self._connection.execute(
            "SELECT COALESCE(SUM(last_id - first_id + 1), 0), "
            "COALESCE(SUM((first_id + last_id) * (last_id - first_id + 1) / 2), 0) FROM row_blocks"
        ).fetchone()
        removed, removed_sum = self._connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(item_id), 0) FROM removed_rows"
        ).fetchone()
        return int(count) - int(removed), int(total) - int(removed_sum)

    def stored_rows(self, journal_key: str) -> set[int]:
        """Row numbers of a file held by live block rows."""
        found: set[int] = set()
        cursor = self._connection.execute(
            "SELECT first_id, last_id, rows FROM row_blocks WHERE journal_key = ?",
            (journal_key,),
        )
        for first_id, last_id, rows_bytes in cursor.fetchall():
            ids = np.arange(first_id, last_id + 1, dtype=np.int64)
            rows = np.frombuffer(rows_bytes, dtype="<i8")
            live = self._live(ids)
            found.update(rows[live].tolist())
        return found

    def present(self, item_ids: Sequence[int]) -> list[int]:
        """Those of ``item_ids`` that are live block rows."""
        return [item_id for item_id, _ in self.locate(item_ids)]

    def locate(self, item_ids: Sequence[int]) -> Iterator[tuple[int, tuple[Block, int]]]:
        """(id, (block, position)) of each live block row among ``item_ids``."""
        wanted = sorted({int(item_id) for item_id in item_ids})
        if not wanted or wanted[-1] < self._smallest_first_id():
            return
        removed = self._removed_among(wanted)
        for item_id in wanted:
            if item_id in removed:
                continue
            block = self._block_holding(item_id)
            position = None if block is None else block.position_of(item_id)
            if block is not None and position is not None:
                yield item_id, (block, position)

    def after(
        self, last_id: int, *, codes: bool = False, fine: bool = False
    ) -> Iterator[tuple[Block, npt.NDArray[np.intp]]]:
        """Each block with live rows above ``last_id``, with those rows' positions, in id order,
        read one at a time (``codes`` / ``fine``: with its codes / fine codes). Not cached: a
        bulk read would only push out the blocks of recent hits."""
        columns = ", ".join(
            [_BLOCK_META_COLUMNS, "c.codes" if codes else "NULL", "c.fine" if fine else "NULL"]
        )
        cursor = self._connection.execute(
            f"SELECT {columns} FROM row_blocks b JOIN row_block_codes c USING (first_id) "
            "WHERE b.last_id > ? ORDER BY b.first_id",
            (last_id,),
        )
        for row in cursor:
            block = _decoded(row)
            live = self._live(block.ids)
            live = live[block.ids[live] > last_id]
            if live.size:
                yield block, live

    # ---- helpers -------------------------------------------------------------------------------

    def _smallest_first_id(self) -> int:
        row = self._connection.execute("SELECT MIN(first_id) FROM row_blocks").fetchone()
        return int(row[0]) if row[0] is not None else 1 << 62

    def _block_holding(self, item_id: int) -> Block | None:
        row = self._connection.execute(
            f"SELECT {_META_COLUMNS} FROM row_blocks WHERE first_id <= ? "
            "ORDER BY first_id DESC LIMIT 1",
            (item_id,),
        ).fetchone()
        if row is None:
            return None
        first_id = int(row[0])
        cached = self._decoded.get(first_id)
        if cached is not None:
            self._decoded.move_to_end(first_id)
            return cached
        block = _decoded(row)
        self._decoded[block.first_id] = block
        self._cached_rows += len(block.ids)
        while self._cached_rows > _CACHED_ROWS and len(self._decoded) > 1:
            _, dropped = self._decoded.popitem(last=False)
            self._cached_rows -= len(dropped.ids)
        return block

    def _removed_among(self, item_ids: Sequence[int]) -> set[int]:
        """Those of ``item_ids`` (increasing) that were removed."""
        if not item_ids:
            return set()
        return self._removed_between(item_ids[0], item_ids[-1]) & set(item_ids)

    def _removed_between(self, low: int, high: int) -> set[int]:
        rows = self._connection.execute(
            "SELECT item_id FROM removed_rows WHERE item_id BETWEEN ? AND ?", (low, high)
        )
        return {int(row[0]) for row in rows}

    def _live(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """Positions of the ids of a block that were not removed."""
        every = np.arange(len(ids))
        removed = self._removed_between(int(ids[0]), int(ids[-1]))
        if not removed:
            return every
        return every[~np.isin(ids, np.fromiter(removed, dtype=np.int64))]


def _decoded(row: tuple[Any, ...]) -> Block:
    """A block from a row of `_META_COLUMNS`, then its codes and fine codes (or NULL)."""
    first_id, last_id, header, rows, coords, added_at, *blobs = row
    codes, fine = [*blobs, None, None][:2]
    stored = StoredBlock(str(header), bytes(rows), None if coords is None else bytes(coords))
    return Block(
        first_id=int(first_id),
        ids=np.arange(int(first_id), int(last_id) + 1, dtype=np.int64),
        rows=decode_block(stored),
        added_at=float(added_at),
        codes=None if codes is None else bytes(codes),
        fine=None if fine is None else bytes(fine),
    )
