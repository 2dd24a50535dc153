"""The records an archive index stores for each item, and what callers pass in to add one."""

from __future__ import annotations

import ntpath
import posixpath
from dataclasses import dataclass, field
from typing import Any

# (x, y, width, height) in source-image pixels.
TileBox = tuple[int, int, int, int]
# (width, height) of the whole source image in pixels.
ImageSize = tuple[int, int]


@dataclass(frozen=True, slots=True)
class NewItem:
    """Metadata of one image or tile about to be indexed.

    ``source`` says where the item came from: for an archive image, its path relative to the
    archive folder, with ``archive`` the NAME of that folder (never a machine path).
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
    archive: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An indexed item: its stable id, when it was added, and the metadata it was added with.

    Records attached to search hits carry no thumbnail (``thumbnail`` is None there); ask the index
    for it by id. Show `display_source` rather than ``source``: indexes written before sources were
    stored relative to their archive hold absolute paths of the indexing machine there.
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
    archive: str | None = None

    @property
    def display_source(self) -> str:
        """Where the item came from, fit to show anyone: ``<archive>/<path in the archive>``.

        A source stored as an absolute path (by older versions, or typed so by a client) is cut
        to its file name, so no folder of the indexing machine is ever shown.
        """
        source = self.source
        if posixpath.isabs(source) or ntpath.isabs(source) or ntpath.splitdrive(source)[0]:
            source = ntpath.basename(source.replace("/", "\\")) or source
        return source if self.archive is None else f"{self.archive}/{source}"
