"""The records an archive index stores for each item, and what callers pass in to add one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (x, y, width, height) in source-image pixels.
TileBox = tuple[int, int, int, int]
# (width, height) of the whole source image in pixels.
ImageSize = tuple[int, int]


@dataclass(frozen=True, slots=True)
class NewItem:
    """Metadata of one image or tile about to be indexed.

    ``content_hash`` identifies the pixels: two items with the same hash are duplicates and only
    the first is stored. ``group`` is the patient, slide or source image the item must never be
    matched against in a fair evaluation. ``thumbnail`` is a small JPEG for display.
    """

    source: str
    content_hash: str
    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    tile: TileBox | None = None
    source_size: ImageSize | None = None
    thumbnail: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An indexed item: its stable id, when it was added, and the metadata it was added with.

    Records attached to search hits carry no thumbnail (``thumbnail`` is None there); ask the index
    for it by id.
    """

    id: int
    added_at: float
    source: str
    content_hash: str
    label: str | None
    group: str | None
    dataset: str | None
    tile: TileBox | None
    source_size: ImageSize | None
    thumbnail: bytes | None
    extra: dict[str, Any]
