"""What one item of an index costs: bytes in the process's memory and on disk, per search stage.

The disk side is read from the index directory itself (every shard's folder included), each file
put in the part it belongs to by its name (`indexer.index.snapshot_files`, `indexer.index.store`):
the FAISS snapshot's codes and its id and filter columns, SQLite's records (which hold every code
again: SQLite is the source of truth), and the files that do not grow with the archive (model,
card, manifests), reported apart. Only the first stage (`codes`) exists today; a re-ranking stage
would be one more `Stage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from indexer.index.manifest import MANIFEST
from indexer.index.shards import SHARDS_MANIFEST
from indexer.index.store import CARD, CHECKPOINT, METADATA

CODES_STAGE = "codes"
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
    if name.endswith(".npz"):
        return "ids"
    if name.startswith(METADATA):
        # The database with its write-ahead log and shared-memory index.
        return "metadata"
    return "other"


def index_footprint(directory: Path, items: int, memory_bytes: int) -> Footprint:
    """Bytes per item of the index in ``directory`` holding ``items`` whose searchable table
    takes ``memory_bytes`` (0 per item for an empty index). Blocking: walks the directory."""
    totals: dict[str, int] = {}
    fixed = 0
    for path, size in _files(directory):
        part = disk_part(path.name)
        if part is None:
            fixed += size
        else:
            totals[part] = totals.get(part, 0) + size
    per_item = (lambda total: total / items) if items else (lambda total: 0.0)
    stage = Stage(
        CODES_STAGE,
        ram=per_item(memory_bytes),
        disk_parts={part: per_item(total) for part, total in sorted(totals.items())},
    )
    return Footprint([stage], fixed)


def _files(directory: Path) -> Iterable[tuple[Path, int]]:
    for path in sorted(directory.rglob("*")):
        try:
            if path.is_file():
                yield path, path.stat().st_size
        except FileNotFoundError:
            # A snapshot generation replaced while walking: its files are gone, not counted.
            continue
