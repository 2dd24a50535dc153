"""The row blocks of ``metadata.sqlite``: feature rows stored a block per record.

`indexer.index.metadata.MetadataStore` owns the connection and its mutex and calls this table
with the mutex held, inside its transactions; this module only knows the SQL of blocks. Why
blocks: see `indexer.index.row_blocks`.

A block holds the ids of its rows (increasing; ids only grow, so blocks never overlap and the
block of an id is the one with the largest ``first_id`` at or below it), their packed codes and
second-stage codes, and the encoded columns. A removed row stays in its block and is listed in
``removed_rows``; every read leaves it out.
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
    id_sum INTEGER NOT NULL,
    journal_key TEXT NOT NULL,
    ids BLOB NOT NULL,
    codes BLOB NOT NULL,
    fine BLOB,
    header TEXT NOT NULL,
    rows BLOB NOT NULL,
    coords BLOB,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS row_blocks_by_file ON row_blocks (journal_key);
CREATE TABLE IF NOT EXISTS removed_rows (item_id INTEGER PRIMARY KEY);
"""
_INSERT = (
    "INSERT INTO row_blocks (first_id, last_id, id_sum, journal_key, ids, codes, fine, header, "
    "rows, coords, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BLOCK_COLUMNS = "first_id, ids, codes, fine, header, rows, coords, added_at"
# Rows of decoded blocks kept for record lookups (a search's hits often share blocks): a decoded
# row holds a few list slots and shares its strings with its run, about 40 bytes.
_CACHED_ROWS = 1 << 20


@dataclass(frozen=True, slots=True)
class Block:
    """A stored block, decoded: its rows' ids, packed codes, fine codes (or None) and columns."""

    first_id: int
    ids: IdArray
    codes: bytes
    fine: bytes | None
    rows: FeatureRows
    added_at: float

    def position_of(self, item_id: int) -> int | None:
        position = int(np.searchsorted(self.ids, item_id))
        return position if position < len(self.ids) and self.ids[position] == item_id else None


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
        def params(n: int) -> tuple[object, ...]:
            block, block_ids = blocks[n], ids[n]
            stored = encode_block(block)
            return (
                int(block_ids[0]),
                int(block_ids[-1]),
                int(block_ids.sum()),
                block.journal_key,
                np.ascontiguousarray(block_ids, dtype="<i8").tobytes(),
                codes[n],
                None if fine is None else fine[n],
                stored.header,
                stored.rows,
                stored.coords,
                now,
            )

        rows = (params(n) for n in range(len(blocks)) if len(ids[n]))
        self._connection.executemany(_INSERT, rows)

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
            "SELECT COALESCE(SUM(length(ids) / 8), 0), COALESCE(SUM(id_sum), 0) FROM row_blocks"
        ).fetchone()
        removed, removed_sum = self._connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(item_id), 0) FROM removed_rows"
        ).fetchone()
        return int(count) - int(removed), int(total) - int(removed_sum)

    def stored_rows(self, journal_key: str) -> set[int]:
        """Row numbers of a file held by live block rows."""
        found: set[int] = set()
        for block in self._blocks("WHERE journal_key = ?", (journal_key,)):
            live = self._live_positions(block)
            found.update(block.rows.rows[live].tolist())
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

    def after(self, last_id: int) -> Iterator[tuple[Block, npt.NDArray[np.intp]]]:
        """Each block with live rows above ``last_id``, with those rows' positions, in id order."""
        for block in self._blocks("WHERE last_id > ?", (last_id,)):
            live = self._live_positions(block)
            live = live[block.ids[live] > last_id]
            if live.size:
                yield block, live

    # ---- helpers -------------------------------------------------------------------------------

    def _smallest_first_id(self) -> int:
        row = self._connection.execute("SELECT MIN(first_id) FROM row_blocks").fetchone()
        return int(row[0]) if row[0] is not None else 1 << 62

    def _block_holding(self, item_id: int) -> Block | None:
        row = self._connection.execute(
            "SELECT first_id FROM row_blocks WHERE first_id <= ? ORDER BY first_id DESC LIMIT 1",
            (item_id,),
        ).fetchone()
        if row is None:
            return None
        first_id = int(row[0])
        cached = self._decoded.get(first_id)
        if cached is not None:
            self._decoded.move_to_end(first_id)
            return cached
        (block,) = self._blocks("WHERE first_id = ?", (first_id,))
        return block

    def _blocks(self, where: str, params: tuple[object, ...]) -> list[Block]:
        rows = self._connection.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM row_blocks {where} ORDER BY first_id", params
        ).fetchall()
        return [self._decode(row) for row in rows]

    def _decode(self, row: tuple[Any, ...]) -> Block:
        first_id, ids, codes, fine, header, rows, coords, added_at = row
        cached = self._decoded.get(int(first_id))
        if cached is not None:
            return cached
        stored = StoredBlock(str(header), bytes(rows), None if coords is None else bytes(coords))
        block = Block(
            first_id=int(first_id),
            ids=np.frombuffer(ids, dtype="<i8").astype(np.int64),
            codes=bytes(codes),
            fine=None if fine is None else bytes(fine),
            rows=decode_block(stored),
            added_at=float(added_at),
        )
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

    def _live_positions(self, block: Block) -> npt.NDArray[np.intp]:
        every = np.arange(len(block.ids))
        removed = self._removed_between(int(block.ids[0]), int(block.ids[-1]))
        if not removed:
            return every
        return every[~np.isin(block.ids, np.fromiter(removed, dtype=np.int64))]
