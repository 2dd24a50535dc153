"""Whole-slide images of an index: the slide registry, and ranking slides from tile hits.

Registry: the ``slides`` table of the index's ``metadata.sqlite`` (the index's source of truth)
holds one row per slide the indexer has opened: its path in its archive folder and that folder's
name (no machine path, as for every item), level-0 size, mpp,
vendor, pyramid, label / group / dataset and, once every tile is stored, how many tiles it has.
Clients name slides by ``slide_id`` only (derived from OpenSlide's content hash of the slide);
the service looks the slide up here, finds its file under the archive folders it is configured
with, and never takes a path from a request.

Aggregation (`rank_slides`): the hits of a search's top N (``SLIDE_POOL``) that come from slides
are grouped by slide; slides are ranked by their best hit's score, then by how many of the top N
hits they hold, then by slide id (so equal slides come in a fixed order). Each slide lists its
hits in rank order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from indexer.index.records import ItemRecord, TileBox
from model.preprocess import resized_pixels, to_rgb

if TYPE_CHECKING:
    from openslide import OpenSlide
    from PIL import Image

METADATA_FILE: Final = "metadata.sqlite"
# Search results considered when ranking slides: enough that a slide's hit count means something,
# few enough that fetching their records costs well under a millisecond.
SLIDE_POOL: Final = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slides (
    slide_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    slide_hash TEXT NOT NULL,
    record TEXT NOT NULL,
    tiles INTEGER
);
"""


@dataclass(frozen=True, slots=True)
class SlideRecord:
    """What the index knows about one slide (dimensions are level-0 pixels).

    ``source`` is the slide's path relative to its archive folder, ``archive`` that folder's name.
    """

    slide_id: str
    source: str
    slide_hash: str
    width: int
    height: int
    mpp_x: float
    mpp_y: float
    vendor: str | None
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    tile_mpp: float | None = None
    tile_size: int | None = None
    tiles: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    archive: str | None = None


class SlideRegistry:
    """The ``slides`` table of an index directory's metadata database (thread-safe).

    A reader (``create=False``, the service) never changes the database: an index built without
    slides simply has none.
    """

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self._mutex = threading.Lock()
        self._connection = sqlite3.connect(
            Path(directory) / METADATA_FILE, check_same_thread=False, timeout=30.0
        )
        with self._mutex:
            if create:
                self._connection.executescript(_SCHEMA)
            self._present = create or _has_table(self._connection)

    def close(self) -> None:
        with self._mutex:
            self._connection.close()

    def __enter__(self) -> SlideRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, record: SlideRecord) -> None:
        """Insert or replace a slide's row (durable on return)."""
        body = asdict(record)
        with self._mutex, self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO slides (slide_id, source, slide_hash, record, tiles) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.slide_id, record.source, record.slide_hash, json.dumps(body), record.tiles),
            )

    def get(self, slide_id: str) -> SlideRecord | None:
        if not self._present:
            return None
        with self._mutex:
            row = self._connection.execute(
                "SELECT record, tiles FROM slides WHERE slide_id = ?", (slide_id,)
            ).fetchone()
        return None if row is None else _record_from_json(row[0], row[1])

    def count(self) -> int:
        if not self._present:
            return 0
        with self._mutex:
            return int(self._connection.execute("SELECT COUNT(*) FROM slides").fetchone()[0])

    def all(self) -> list[SlideRecord]:
        if not self._present:
            return []
        with self._mutex:
            rows = self._connection.execute(
                "SELECT record, tiles FROM slides ORDER BY slide_id"
            ).fetchall()
        return [_record_from_json(body, tiles) for body, tiles in rows]


def _has_table(connection: sqlite3.Connection) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'slides'"
    ).fetchone()
    return row is not None


def _record_from_json(body: str, tiles: int | None) -> SlideRecord:
    fields = json.loads(body)
    fields["level_dimensions"] = [tuple(pair) for pair in fields["level_dimensions"]]
    fields["tiles"] = tiles
    return SlideRecord(**fields)


# ---- tile pixels -------------------------------------------------------------------------------


def level_read_size(box: TileBox, level_downsample: float) -> tuple[int, int]:
    """Pixels to read at a level of this downsample to cover a level-0 box."""
    return (
        max(1, round(box[2] / level_downsample)),
        max(1, round(box[3] / level_downsample)),
    )


def read_slide_tile(slide: OpenSlide, level: int, box: TileBox, tile_size: int) -> Image.Image:
    """The RGB tile at level-0 ``box``, read from ``level`` and resized to ``tile_size`` a side.

    Transparent pixels (outside the scanned area) become white glass (`model.preprocess.to_rgb`).
    """
    from PIL import Image

    size = level_read_size(box, float(slide.level_downsamples[level]))
    region = to_rgb(slide.read_region((box[0], box[1]), level, size))
    if region.size == (tile_size, tile_size):
        return region
    return Image.fromarray(resized_pixels(region, (tile_size, tile_size)))


# ---- aggregation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankedHit:
    """One tile hit of a search: its 1-based rank, its score and its record."""

    rank: int
    score: float
    record: ItemRecord


@dataclass(frozen=True, slots=True)
class RankedSlide:
    """A slide among a search's top hits: best score, hit count and its hits in rank order."""

    slide_id: str
    best_score: float
    hit_count: int
    hits: list[RankedHit]


def slide_id_of(record: ItemRecord) -> str | None:
    """The slide an item was cut from, or None for items that are not slide tiles."""
    value = (record.extra or {}).get("slide_id")
    return value if isinstance(value, str) else None


def rank_slides(hits: Sequence[RankedHit], limit: int | None = None) -> list[RankedSlide]:
    """Slides of ``hits`` ranked by best score, then hit count, then slide id (module doc)."""
    grouped: dict[str, list[RankedHit]] = {}
    for hit in sorted(hits, key=lambda hit: hit.rank):
        slide_id = slide_id_of(hit.record)
        if slide_id is not None:
            grouped.setdefault(slide_id, []).append(hit)
    slides = [
        RankedSlide(slide_id, max(hit.score for hit in own), len(own), own)
        for slide_id, own in grouped.items()
    ]
    slides.sort(key=lambda slide: (-slide.best_score, -slide.hit_count, slide.slide_id))
    return slides if limit is None else slides[:limit]
