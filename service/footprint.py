"""What one item of an index costs: bytes in the process's memory and on disk, per search stage.

The disk side is read from the index directory itself (every shard's folder included), each file
put in the part it belongs to by its name (`indexer.index.snapshot_files`, `indexer.index.store`):
the FAISS snapshot's codes and its id and filter columns, SQLite's records (which hold every code
again: SQLite is the source of truth), and the files that do not grow with the archive (model,
card, manifests), reported apart. An index with a second stage has one more `Stage`, `fine`: its
memory-mapped snapshot files (`fine_codes`, `fine_ids`: disk, not the process's memory) and, in
RAM, only the codes added since that snapshot; SQLite's copy of the fine codes is counted in the
first stage's `metadata`, with every other record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from indexer.index.manifest import MANIFEST
from indexer.index.shards import SHARDS_MANIFEST
from indexer.index.store import CARD, CHECKPOINT, METADATA

CODES_STAGE = "codes"
FINE_STAGE = "fine"
_FINE_PARTS = ("fine_codes", "fine_ids")
_FIXED = frozenset({CHECKPOINT, CARD, MANIFEST, SHARDS_MANIFEST})


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage's bytes per item: ``ram`` and each part of its disk."""

    name: str
    ram: float
    disk_parts: dict[str, float]

    @property
    def disk(self) -> float:
        return sum(self.disk_parts.values())


@dataclass(frozen=True, slots=True)
class Footprint:
    """Bytes per item over all stages, and the disk that does not grow with items."""

    stages: list[Stage]
    fixed_disk_bytes: int

    @property
    def ram(self) -> float:
        return sum(stage.ram for stage in self.stages)

    @property
    def disk(self) -> float:
        return sum(stage.disk for stage in self.stages)


def disk_part(name: str) -> str | None:
    """The part a file of an index directory belongs to; None for the fixed files."""
    if name in _FIXED:
        return None
    if name.endswith(".faiss"):
        return "codes"
    if name.startswith("fine-ids.") and name.endswith(".npy"):
        return "fine_ids"
    if name.startswith("fine.") and name.endswith(".npy"):
        return "fine_codes"
    if name.endswith(".npz"):
        return "ids"
    if name.startswith(METADATA):
        # The database with its write-ahead log and shared-memory index.
        return "metadata"
    return "other"


def index_footprint(
    directory: Path, items: int, memory_bytes: int, fine_memory_bytes: int | None = None
) -> Footprint:
    """Bytes per item of the index in ``directory`` holding ``items`` whose searchable table
    takes ``memory_bytes`` (0 per item for an empty index), and whose second stage, where it has
    one, holds ``fine_memory_bytes`` in RAM. Blocking: walks the directory."""
    totals: dict[str, int] = {}
    fixed = 0
    for path, size in _files(directory):
        part = disk_part(path.name)
        if part is None:
            fixed += size
        else:
            totals[part] = totals.get(part, 0) + size
    per_item = (lambda total: total / items) if items else (lambda total: 0.0)
    fine = {part: totals.pop(part) for part in _FINE_PARTS if part in totals}
    stages = [
        Stage(
            CODES_STAGE,
            ram=per_item(memory_bytes),
            disk_parts={part: per_item(total) for part, total in sorted(totals.items())},
        )
    ]
    if fine_memory_bytes is not None or fine:
        stages.append(
            Stage(
                FINE_STAGE,
                ram=per_item(fine_memory_bytes or 0),
                disk_parts={part: per_item(fine.get(part, 0)) for part in _FINE_PARTS},
            )
        )
    return Footprint(stages, fixed)


def _files(directory: Path) -> Iterable[tuple[Path, int]]:
    for path in sorted(directory.rglob("*")):
        try:
            if path.is_file():
                yield path, path.stat().st_size
        except FileNotFoundError:
            # A snapshot generation replaced while walking: its files are gone, not counted.
            continue
