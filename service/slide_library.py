"""The index's whole-slide images for the service: metadata and Deep Zoom tiles, off the event loop.

Slides are looked up by id in the index's slide registry (`indexer.index.slides`); a request
never names a path. Deep Zoom descriptors and tiles are made by OpenSlide's own
`openslide.deepzoom.DeepZoomGenerator` (254 px tiles, 1 px overlap, JPEG at quality 75, the
defaults of OpenSlide's example viewer). Open slides are kept in an LRU of ``open_slides``
entries and encoded tiles in an LRU bounded by ``tile_cache_bytes``; all slide reading runs in a
small thread pool of its own, so a viewer's burst of tile requests neither blocks the event loop
nor queues behind searches.

"More like this" (`item_query`) re-reads an item's own tile from its source, here too, and a
region of a slide chosen in the viewer (`plan_region`, `read_region`) is read for a region query:
from the pyramid level the index's tiles are read from (the largest downsample not above the
index's mpp, `indexer.index.tissue.best_level_of`), at that level's own resolution, so that the
query is exactly what an upload of the same pixels with that level's mpp would be.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from PIL import Image

from indexer.index.protocol import Index
from indexer.index.records import ItemRecord, TileBox
from indexer.index.slides import (
    SlideRecord,
    SlideRegistry,
    level_read_size,
    read_slide_tile,
    slide_id_of,
)
from indexer.index.tissue import best_level_of
from model.preprocess import open_upright_rgb, to_rgb
from service.paths import public_text

if TYPE_CHECKING:
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

T = TypeVar("T")

logger = logging.getLogger(__name__)

DZI_TILE_SIZE: Final = 254
DZI_OVERLAP: Final = 1
DZI_FORMAT: Final = "jpeg"
DZI_QUALITY: Final = 75
OPEN_SLIDES: Final = 8
TILE_CACHE_BYTES: Final = 64 * 1024 * 1024
SLIDE_WORKERS: Final = 4


class SlideUnavailableError(LookupError):
    """No such slide in the index, or its file can no longer be opened."""


class TileOutOfRangeError(LookupError):
    """A Deep Zoom level, column or row outside the slide's pyramid."""


class ItemSourceUnavailableError(LookupError):
    """An item whose tile cannot be read again: unknown id, or its source is gone."""


class RegionRefusedError(ValueError):
    """A slide region that cannot be searched: outside the slide, or too large to read."""

    def __init__(self, message: str, *, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True, slots=True)
class SlideRegion:
    """A level-0 box of a slide, and how it is read: from ``level``, ``read_size`` pixels."""

    slide_id: str
    box: TileBox
    level: int
    read_size: tuple[int, int]
    mpp: float
    """um/px of the pixels read (the level's, along x)."""

    @property
    def pixels(self) -> int:
        return self.read_size[0] * self.read_size[1]


@dataclass(frozen=True, slots=True)
class _OpenSlide:
    slide: OpenSlide
    deepzoom: DeepZoomGenerator


class SlideLibrary:
    """Registry lookups, open slides and cached Deep Zoom tiles of one index directory."""

    def __init__(
        self,
        directory: Path,
        archive_roots: Sequence[Path] = (),
        *,
        open_slides: int = OPEN_SLIDES,
        tile_cache_bytes: int = TILE_CACHE_BYTES,
        workers: int = SLIDE_WORKERS,
    ) -> None:
        self.registry = SlideRegistry(directory, create=False)
        self.archive_roots = [Path(os.path.abspath(root)) for root in archive_roots]
        self.slide_count = self.registry.count()
        self._open_limit = open_slides
        self._tile_limit = tile_cache_bytes
        self._open: OrderedDict[str, _OpenSlide] = OrderedDict()
        self._tiles: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._tile_bytes = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slides")

    async def run(self, function: Callable[[], T]) -> T:
        """Run blocking slide work in the library's own pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def record(self, slide_id: str) -> SlideRecord:
        record = self.registry.get(slide_id)
        if record is None:
            raise SlideUnavailableError(f"no slide with id {slide_id!r} in this index")
        return record

    def dzi(self, slide_id: str) -> str:
        """The Deep Zoom descriptor (XML) of a slide."""
        return self._opened(slide_id).deepzoom.get_dzi(DZI_FORMAT)

    def level_tiles(self, slide_id: str) -> tuple[tuple[int, int], ...]:
        """(columns, rows) of Deep Zoom tiles at each level, coarsest first."""
        return tuple(self._opened(slide_id).deepzoom.level_tiles)

    def tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        """One JPEG Deep Zoom tile, from the cache when it is there."""
        key = (slide_id, level, col, row)
        with self._lock:
            cached = self._tiles.get(key)
            if cached is not None:
                self._tiles.move_to_end(key)
                return cached
        deepzoom = self._opened(slide_id).deepzoom
        if not 0 <= level < deepzoom.level_count:
            raise TileOutOfRangeError(
                f"level {level} is outside 0..{deepzoom.level_count - 1} of slide {slide_id}"
            )
        cols, rows = deepzoom.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileOutOfRangeError(
                f"tile {col}_{row} is outside the {cols} x {rows} tiles of level {level}"
            )
        buffer = io.BytesIO()
        _read_or_unavailable(lambda: deepzoom.get_tile(level, (col, row))).save(
            buffer, format="JPEG", quality=DZI_QUALITY
        )
        data = buffer.getvalue()
        self._remember(key, data)
        return data

    def item_query(self, index: Index, item_id: int) -> bytes:
        """An item's own tile, re-read from its source, as PNG bytes to search with.

        A slide tile is read from its slide exactly as the indexer read it (same level, box and
        size: `indexer.index.slides.read_slide_tile`); another item from its source file on this
        host, cropped to its tile box. The path comes from the index, never from the client.
        """
        record = index.get(item_id)
        if record is None:
            raise ItemSourceUnavailableError(f"no archive item with id {item_id}")
        pixels = self._item_pixels(record)
        buffer = io.BytesIO()
        pixels.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def plan_region(
        self, slide_id: str, box: TileBox, index_mpp: float, max_pixels: int
    ) -> SlideRegion:
        """Where and how to read a level-0 ``box`` of a slide for a query at ``index_mpp``.

        Refused (`RegionRefusedError`) when the box does not lie inside the slide's level 0, or
        when its read would exceed ``max_pixels`` (the upload pixel limit): a region query is
        read whole before it is tiled, like an uploaded image.
        """
        record = self.record(slide_id)
        x, y, width, height = box
        if width < 1 or height < 1 or x < 0 or y < 0:
            raise RegionRefusedError(
                f"the region ({x}, {y}, {width} x {height}) must have a positive width and "
                "height and a non-negative origin",
                too_large=False,
            )
        if x + width > record.width or y + height > record.height:
            raise RegionRefusedError(
                f"the region ({x}, {y}, {width} x {height}) reaches beyond slide {slide_id}, "
                f"which is {record.width} x {record.height} level-0 pixels",
                too_large=False,
            )
        # From the registry's pyramid: a refused region never opens the slide.
        level = best_level_of(record.level_downsamples, index_mpp / record.mpp_x)
        downsample = record.level_downsamples[level]
        read_size = level_read_size(box, downsample)
        region = SlideRegion(slide_id, box, level, read_size, record.mpp_x * downsample)
        if region.pixels > max_pixels:
            raise RegionRefusedError(
                f"the region ({x}, {y}, {width} x {height}) is {read_size[0]} x {read_size[1]} "
                f"pixels at {region.mpp:g} um/px, more than the limit of {max_pixels:,} "
                "(HISTOSEARCH_MAX_IMAGE_PIXELS): choose a smaller region",
                too_large=True,
            )
        return region

    def read_region(self, region: SlideRegion) -> Image.Image:
        """The RGB pixels of a planned region (transparent parts, off the scan, as white glass)."""
        slide = self._opened(region.slide_id).slide
        origin = (region.box[0], region.box[1])
        return _read_or_unavailable(
            lambda: to_rgb(slide.read_region(origin, region.level, region.read_size))
        )

    def _item_pixels(self, record: ItemRecord) -> Image.Image:
        slide_id = slide_id_of(record)
        if slide_id is not None and record.tile is not None:
            try:
                slide = self._opened(slide_id).slide
            except SlideUnavailableError as error:
                raise ItemSourceUnavailableError(f"item {record.id}: {error}") from error
            extra, box = record.extra, record.tile
            try:
                return _read_or_unavailable(
                    lambda: read_slide_tile(slide, int(extra["level"]), box, int(extra["tile_px"]))
                )
            except SlideUnavailableError as error:
                raise ItemSourceUnavailableError(f"item {record.id}: {error}") from error
        try:
            source = self.locate(record.archive, record.source)
        except SlideUnavailableError as error:
            raise ItemSourceUnavailableError(f"item {record.id}: {error}") from error
        try:
            pixels = open_upright_rgb(source)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            # The error names the file's path on this machine: the log has it, the answer not.
            logger.warning("item %d: cannot read %s: %s", record.id, source, error)
            raise ItemSourceUnavailableError(
                f"the source of item {record.id} is no longer readable "
                f"({type(error).__name__}; see the server log)"
            ) from error
        if record.tile is None:
            return pixels
        x, y, width, height = record.tile
        return pixels.crop((x, y, x + width, y + height))

    def locate(self, archive: str | None, source: str) -> Path:
        """The file of an archive source, under ``<root>/<archive>/`` or ``<root>/`` of a root.

        Sources come from the index, never from a request; one that would lead outside its
        root (an absolute path, ``..``) is not followed.
        """
        relative = Path(source)
        if relative.is_absolute() or ".." in relative.parts:
            raise SlideUnavailableError(
                f"{display_name(archive, source)!r} is not a path inside an archive"
            )
        for root in self.archive_roots:
            for folder in (root / archive, root) if archive else (root,):
                candidate = folder / relative
                if candidate.is_file():
                    return candidate
        where = f"archive {archive!r}" if archive else "its archive"
        raise SlideUnavailableError(
            f"{display_name(archive, source)} cannot be read by the service: it is not under "
            f"any HISTOSEARCH_ARCHIVE_ROOTS folder (set it to the folder holding {where})"
        )

    def _remember(self, key: tuple[str, int, int, int], data: bytes) -> None:
        with self._lock:
            if key in self._tiles or len(data) > self._tile_limit:
                return
            self._tiles[key] = data
            self._tile_bytes += len(data)
            while self._tile_bytes > self._tile_limit:
                _, evicted = self._tiles.popitem(last=False)
                self._tile_bytes -= len(evicted)

    def _opened(self, slide_id: str) -> _OpenSlide:
        with self._lock:
            entry = self._open.get(slide_id)
            if entry is not None:
                self._open.move_to_end(slide_id)
                return entry
        record = self.record(slide_id)
        entry = _open_slide(record, self.locate(record.archive, record.source))
        with self._lock:
            self._open[slide_id] = entry
            self._open.move_to_end(slide_id)
            # An evicted slide is only dropped, not closed: a request in another thread may still
            # be reading from it; OpenSlide closes it once the last reference goes.
            while len(self._open) > self._open_limit:
                self._open.popitem(last=False)
        return entry

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._open.clear()
            self._tiles.clear()
        self.registry.close()


def _read_or_unavailable(read: Callable[[], Image.Image]) -> Image.Image:
    """``read()``, a damaged slide (a broken tile) reported as unavailable rather than a crash."""
    import openslide

    try:
        return read()
    except openslide.OpenSlideError as error:
        # OpenSlide's messages may name the slide's path on this machine: logged, not answered.
        logger.warning("slide read failed: %s", error)
        raise SlideUnavailableError(
            "the slide cannot be read here (OpenSlideError; see the server log)"
        ) from error


def display_name(archive: str | None, source: str) -> str:
    """A stored source as answers may show it: never a path of this machine (`public_text`)."""
    return public_text(source if archive is None else f"{archive}/{source}")


def _open_slide(record: SlideRecord, path: Path) -> _OpenSlide:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as error:
        logger.warning("slide %s: cannot open %s: %s", record.slide_id, path, error)
        raise SlideUnavailableError(
            f"slide {record.slide_id} is in the index but its file cannot be opened "
            f"({type(error).__name__}; see the server log)"
        ) from error
    deepzoom = DeepZoomGenerator(slide, tile_size=DZI_TILE_SIZE, overlap=DZI_OVERLAP)
    return _OpenSlide(slide, deepzoom)
