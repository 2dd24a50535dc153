"""Rows of a feature file kept as columns: how a feature archive's items travel and are stored.

A feature archive brings rows by the hundred thousand, each with the same few fields (slide,
patient, label, row number, perhaps coordinates), and long runs of rows share their slide,
patient and label. One SQLite row per item costs 8-13 us of CPU per row at insert, more than
everything else of indexing such a row together, so a stretch of one file's rows is a
`FeatureRows`: columns, stored by `indexer.index.metadata.MetadataStore` as one record (a
"row block") whose string columns are run-length encoded. Every reader of the store sees its
rows as items like any other (`FeatureRows.record`), with the same fields an item written one by
one would have (`FeatureRows.items`), so a search, a slide query or ``/stats`` cannot tell them
apart.

A row is identified by its file and its row number: its content hash is
``features:<archive>/<source>#<row>`` (`row_key`), which is also how a resumed run knows which
rows of a half-written file are stored.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from indexer.index.records import ItemRecord, NewItem, TileBox

IntArray = npt.NDArray[np.int64]
_Value = TypeVar("_Value")

# The newest block format; a reader refuses others by name instead of misreading them.
BLOCK_FORMAT = 1
# Rows of one stored block at most: a search hit's record decodes its whole block (0.08 ms for
# 1024 rows of the shared set, 0.25 ms for 4096), while what a block costs to write is already
# under 0.1 us a row at a few hundred rows.
MAX_BLOCK_ROWS = 1024


def row_key(journal_key: str, row: int) -> str:
    """The content hash of row ``row`` of the file the journal knows as ``journal_key``."""
    return f"features:{journal_key}#{row}"


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Some rows of one feature file, as columns, in file order.

    ``rows`` are the rows' numbers in their file (a refused row leaves a gap). ``constants`` is
    what every row of the file shares (a manifest's extra columns, the patch size and level);
    ``columns`` the other per-row columns (the ``npy`` CSV's). ``coords`` are level-0 positions;
    with ``tile_size`` (the level-0 patch size) they make each row's tile.
    """

    source: str
    archive: str | None
    dataset: str | None
    rows: IntArray
    slide_ids: Sequence[str]
    labels: Sequence[str | None]
    groups: Sequence[str]
    columns: dict[str, Sequence[str]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    coords: IntArray | None = None
    tile_size: int | None = None

    def __post_init__(self) -> None:
        count = len(self.rows)
        lengths = [len(self.slide_ids), len(self.labels), len(self.groups)]
        lengths += [len(values) for values in self.columns.values()]
        if self.coords is not None:
            lengths.append(len(self.coords))
        if any(length != count for length in lengths):
            raise ValueError(f"every column of {self.source} must have {count} rows")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def journal_key(self) -> str:
        """``<archive>/<source>``: the file's name in the resume journal."""
        return self.source if self.archive is None else f"{self.archive}/{self.source}"

    def take(self, positions: npt.ArrayLike) -> FeatureRows:
        """The rows at ``positions`` (increasing), as a new block."""
        at = np.asarray(positions, dtype=np.intp)
        listed = at.tolist()
        return FeatureRows(
            source=self.source,
            archive=self.archive,
            dataset=self.dataset,
            rows=self.rows[at],
            slide_ids=[self.slide_ids[n] for n in listed],
            labels=[self.labels[n] for n in listed],
            groups=[self.groups[n] for n in listed],
            columns={name: [values[n] for n in listed] for name, values in self.columns.items()},
            constants=self.constants,
            coords=None if self.coords is None else self.coords[at],
            tile_size=self.tile_size,
        )

    def parts(self, max_rows: int = MAX_BLOCK_ROWS) -> list[FeatureRows]:
        """The rows cut into blocks of at most ``max_rows``, in order (itself when it fits)."""
        if len(self) <= max_rows:
            return [self]
        return [self._slice(start, start + max_rows) for start in range(0, len(self), max_rows)]

    def _slice(self, start: int, stop: int) -> FeatureRows:
        return FeatureRows(
            source=self.source,
            archive=self.archive,
            dataset=self.dataset,
            rows=self.rows[start:stop],
            slide_ids=self.slide_ids[start:stop],
            labels=self.labels[start:stop],
            groups=self.groups[start:stop],
            columns={name: values[start:stop] for name, values in self.columns.items()},
            constants=self.constants,
            coords=None if self.coords is None else self.coords[start:stop],
            tile_size=self.tile_size,
        )

    def content_hashes(self) -> list[str]:
        key = self.journal_key
        return [row_key(key, row) for row in self.rows.tolist()]

    def extra(self, position: int) -> dict[str, Any]:
        """What an item keeps beside its fields: the file's constants, the row's other columns,
        its slide id, row number and coordinates."""
        extra: dict[str, Any] = dict(self.constants)
        extra.update((name, values[position]) for name, values in self.columns.items())
        extra["slide_id"] = self.slide_ids[position]
        extra["row"] = int(self.rows[position])
        if self.coords is not None:
            extra["x"], extra["y"] = (int(value) for value in self.coords[position])
        return extra

    def tile(self, position: int) -> TileBox | None:
        """The row's patch in level-0 pixels, when its place and level-0 size are both known."""
        if self.coords is None or self.tile_size is None:
            return None
        x, y = (int(value) for value in self.coords[position])
        return (x, y, self.tile_size, self.tile_size)

    def items(self) -> list[NewItem]:
        """The rows as items, for an index that stores items one by one."""
        return [
            NewItem(
                source=self.source,
                content_hash=content_hash,
                label=self.labels[n],
                group=self.groups[n],
                dataset=self.dataset,
                tile=self.tile(n),
                extra=self.extra(n),
                archive=self.archive,
            )
            for n, content_hash in enumerate(self.content_hashes())
        ]

    def record(self, position: int, item_id: int, added_at: float) -> ItemRecord:
        """The stored row at ``position`` as the record of item ``item_id``."""
        return ItemRecord(
            id=item_id,
            added_at=added_at,
            source=self.source,
            content_hash=row_key(self.journal_key, int(self.rows[position])),
            label=self.labels[position],
            group=self.groups[position],
            dataset=self.dataset,
            tile=self.tile(position),
            source_size=None,
            thumbnail=None,
            extra=self.extra(position),
            archive=self.archive,
        )


# ---- the stored form -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block as SQLite keeps it: a JSON header (file, run-length encoded string columns,
    constants) and the row numbers and coordinates as little-endian int64 bytes."""

    header: str
    rows: bytes
    coords: bytes | None


def encode_block(block: FeatureRows) -> StoredBlock:
    header = {
        "format": BLOCK_FORMAT,
        "source": block.source,
        "archive": block.archive,
        "dataset": block.dataset,
        "slide_id": _runs(block.slide_ids),
        "label": _runs(block.labels),
        "group": _runs(block.groups),
        "columns": {name: _runs(values) for name, values in block.columns.items()},
        "constants": block.constants,
        "tile_size": block.tile_size,
    }
    coords = None if block.coords is None else _int64_bytes(block.coords)
    return StoredBlock(json.dumps(header), _int64_bytes(block.rows), coords)


def decode_block(stored: StoredBlock) -> FeatureRows:
    """The block ``encode_block`` stored; ValueError for a format this version cannot read."""
    header = json.loads(stored.header)
    if header.get("format") != BLOCK_FORMAT:
        raise ValueError(f"a row block of format {header.get('format')}, expected {BLOCK_FORMAT}")
    rows = np.frombuffer(stored.rows, dtype="<i8").astype(np.int64)
    coords = None
    if stored.coords is not None:
        coords = np.frombuffer(stored.coords, dtype="<i8").astype(np.int64).reshape(-1, 2)
    return FeatureRows(
        source=header["source"],
        archive=header["archive"],
        dataset=header["dataset"],
        rows=rows,
        slide_ids=RunColumn(header["slide_id"]),
        labels=RunColumn(header["label"]),
        groups=RunColumn(header["group"]),
        columns={name: RunColumn(runs) for name, runs in header["columns"].items()},
        constants=header["constants"],
        coords=coords,
        tile_size=header["tile_size"],
    )


def _runs(values: Sequence[Any]) -> list[list[Any]]:
    """``values`` as [value, count] runs: a slide's rows share their slide, patient and label."""
    if not values:
        return []
    # Neighbours compared by numpy over object arrays: 4x less CPU than itertools.groupby.
    column = np.empty(len(values), dtype=object)
    column[:] = values
    starts = np.flatnonzero(np.concatenate(([True], column[1:] != column[:-1])))
    counts = np.diff(np.append(starts, len(values)))
    return [
        [values[start], count]
        for start, count in zip(starts.tolist(), counts.tolist(), strict=True)
    ]


class RunColumn(Sequence[_Value]):
    """A stored string column read back as its runs: a row's value is found by bisection, so
    the record of a search hit does not expand every row of its block. Iterating it expands."""

    def __init__(self, runs: Sequence[Sequence[Any]]) -> None:
        self._values = [value for value, _ in runs]
        self._counts = [int(count) for _, count in runs]
        self._ends = list(itertools.accumulate(self._counts))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> _Value: ...

    @overload
    def __getitem__(self, index: slice) -> list[_Value]: ...

    def __getitem__(self, index: int | slice) -> _Value | list[_Value]:
        if isinstance(index, slice):
            return list(self)[index]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"row {index} of a column of {len(self)}")
        value: _Value = self._values[bisect.bisect_right(self._ends, position)]
        return value

    def __iter__(self) -> Iterator[_Value]:
        repeated = map(itertools.repeat, self._values, self._counts)
        return itertools.chain.from_iterable(repeated)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics: unhashable


def _int64_bytes(values: npt.NDArray[np.integer]) -> bytes:
    return np.ascontiguousarray(values, dtype="<i8").tobytes()
