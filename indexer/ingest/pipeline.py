"""Encoding an archive into an index: read -> decode -> tile -> embed -> write.

Each stage is a plain function so it can be tested alone; `index_archive` runs them with reading,
decoding and tiling in a thread pool (PIL releases the GIL while decoding) while the calling
thread embeds full batches and hands them to the one writer of every ingest run
(`indexer.ingest.writer.IngestWriter`: batches, journal, flush, summary).

Resuming: the index's journal (``index.journal``). A source image is marked finished (with its
file hash) once all its tiles are written; a later run skips finished files, and tiles of a
half-written image that are already stored (same content hash) are not embedded again. Files with
the same bytes as a finished one are recognised as duplicates.

Unreadable images (a file that cannot be read, bytes that do not decode to RGB pixels) are
logged, counted and listed in the summary, and the run goes on. Only reading and decoding are
guarded: an error in tiling, embedding or writing is a bug or a broken index and stops the run.

The embedding stage takes any `Encoder`; programs pass a `model.Embedder`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.index.hashing import file_hash, tile_hash
from indexer.index.protocol import Index
from indexer.index.records import NewItem, TileBox
from indexer.index.thumbnails import make_thumbnail
from indexer.index.tiling import TilingConfig, has_tissue, tile_boxes
from indexer.ingest.archive_root import ArchiveRoot, journal_key
from indexer.ingest.sources import ArchiveImage

# The run's config and summary are the writer's; importable from here as before.
from indexer.ingest.writer import IndexingSummary as IndexingSummary
from indexer.ingest.writer import (
    IngestWriter,
    SeenBefore,
    prefetched,
    progress,
    seen_before,
)
from indexer.ingest.writer import PipelineConfig as PipelineConfig
from model.preprocess import upright_rgb

log = logging.getLogger(__name__)

# Images from a trusted archive may be far above PIL's default bomb limit (89 Mpx): extended CRC
# images are ~35 Mpx, BRACS RoIs can be larger. One gigapixel RGB is 3 GB decoded: the default the
# `index` command sets (PIL's limit is process-wide, so the library leaves it to the program).
TRUSTED_ARCHIVE_MAX_PIXELS = 1_000_000_000
# Exceptions of reading a file (missing, unreadable) and of decoding its bytes that mean "this
# file is not a usable image" (`UnsupportedPixelsError` from the RGB conversion is a ValueError).
# Caught around those two stages only, never around code of this program.
UNREADABLE_FILE = (OSError,)
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Encoder = Callable[[Sequence[Image.Image]], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class RawImage:
    """Stage 1 output: a file's bytes and their SHA-256, and the source and archive name stored
    for it (`indexer.ingest.archive_root`: no machine path)."""

    image: ArchiveImage
    data: bytes
    file_hash: str
    source: str
    archive: str | None

    @property
    def journal_key(self) -> str:
        return journal_key(self.archive, self.source)


@dataclass(frozen=True, slots=True)
class Tile:
    """Stage 3 output: the pixels of one tile and the item that will describe it."""

    pixels: Image.Image
    item: NewItem


@dataclass(frozen=True, slots=True)
class TiledImage:
    """All tiles kept from one source image, and how many were background."""

    raw: RawImage
    tiles: list[Tile]
    background: int


@dataclass(frozen=True, slots=True)
class FinishedBefore:
    """The file, with the same bytes, was indexed whole by an earlier run: nothing to do."""

    image: ArchiveImage


@dataclass(frozen=True, slots=True)
class DuplicateFile:
    """The file has the same bytes as ``twin``, another source already indexed: nothing to do."""

    image: ArchiveImage
    twin: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The file could not be read or decoded; ``reason`` says why, for the summary."""

    image: ArchiveImage
    reason: str

    @classmethod
    def because(cls, image: ArchiveImage, error: BaseException) -> Unreadable:
        return cls(image, f"{type(error).__name__}: {error}")


# What preparing one image (stages 1-3) comes to.
Prepared = TiledImage | FinishedBefore | DuplicateFile | Unreadable


# ---- stages ------------------------------------------------------------------------------------


def read_image(image: ArchiveImage, root: ArchiveRoot | None = None) -> RawImage:
    """Stage 1: the file's bytes and content hash; sources relative to ``root`` (default: the
    image's own folder)."""
    data = image.path.read_bytes()
    root = root or ArchiveRoot.of([image.path])
    return RawImage(image, data, file_hash(data), root.source_of(image.path), root.name)


def decode_image(raw: RawImage) -> Image.Image:
    """Stage 2: decoded 8-bit RGB pixels, turned upright by the file's EXIF orientation.

    The same conversion as the service's uploads (`model.preprocess.upright_rgb`); raises one of
    `UNREADABLE` for a bad file, including pixels that have no RGB meaning (floating-point data).
    (Decoded from the bytes already read and hashed, so the pixels are those of that hash.)
    """
    with Image.open(io.BytesIO(raw.data)) as opened:
        opened.load()
        return upright_rgb(opened)


def cut_tiles(raw: RawImage, pixels: Image.Image, config: TilingConfig) -> TiledImage:
    """Stage 3: tiles with tissue, each with its item record (hash, position, thumbnail)."""
    boxes = tile_boxes(pixels.width, pixels.height, config)
    tiles, background = [], 0
    for box in boxes:
        tile = pixels.crop((box[0], box[1], box[0] + box[2], box[1] + box[3]))
        if len(boxes) > 1 and not has_tissue(tile, config.min_tissue):
            background += 1
            continue
        tiles.append(Tile(tile, _item_for(raw, box, pixels.size, tile)))
    return TiledImage(raw, tiles, background)


def embed_tiles(tiles: Sequence[Tile], encoder: Encoder) -> npt.NDArray[np.float32]:
    """Stage 4: (N, D) descriptors of the tiles."""
    return encoder([tile.pixels for tile in tiles])


def write_tiles(index: Index, tiles: Sequence[Tile], descriptors: npt.NDArray[np.float32]) -> int:
    """Stage 5: add to the index (durable on return); returns how many were new."""
    outcomes = index.add(descriptors, [tile.item for tile in tiles])
    return sum(outcome.added for outcome in outcomes)


def _item_for(raw: RawImage, box: TileBox, size: tuple[int, int], tile: Image.Image) -> NewItem:
    image = raw.image
    return NewItem(
        source=raw.source,
        archive=raw.archive,
        content_hash=tile_hash(raw.file_hash, box),
        label=image.label,
        group=image.group,
        dataset=image.dataset,
        tile=box,
        source_size=size,
        thumbnail=make_thumbnail(tile),
        extra=dict(image.extra),
    )


# ---- runner ------------------------------------------------------------------------------------


def prepare(
    image: ArchiveImage, index: Index, config: TilingConfig, root: ArchiveRoot | None = None
) -> Prepared:
    """Stages 1-3 for one image: its tiles, or why it needs no work or cannot be read.

    Only reading and decoding may fail as an unreadable image; anything raised by tiling is a
    bug and propagates.
    """
    try:
        raw = read_image(image, root)
    except UNREADABLE_FILE as error:
        return Unreadable.because(image, error)
    # Journals written before sources were relative name the absolute path.
    seen = seen_before(index.journal, (raw.journal_key, str(image.path)), raw.file_hash)
    if seen is not None:
        return FinishedBefore(image) if seen.twin is None else DuplicateFile(image, seen.twin)
    try:
        pixels = decode_image(raw)
    except UNREADABLE as error:
        return Unreadable.because(image, error)
    return cut_tiles(raw, pixels, config)


def index_archive(
    images: Sequence[ArchiveImage],
    index: Index,
    encoder: Encoder,
    config: PipelineConfig | None = None,
    archive_root: Path | None = None,
) -> IndexingSummary:
    """Index every image of an archive into ``index``; see the module doc for resuming.

    Sources are stored relative to ``archive_root`` (default: the folder holding every image).
    """
    config = config or PipelineConfig()
    root = ArchiveRoot.of([image.path for image in images], archive_root)
    writer = IngestWriter(index, config)
    window = _Window(config)
    pending: list[Tile] = []
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        work = partial(prepare, index=index, config=config.tiling, root=root)
        outcomes = prefetched(pool, work, images, window.ahead)
        with closing(outcomes):
            for outcome in progress(outcomes, len(images), config.progress, "indexing", "image"):
                writer.summary.images += 1
                if not isinstance(outcome, TiledImage):
                    _count_skipped(outcome, writer)
                    continue
                window.saw(outcome)
                pending.extend(_begin(outcome, writer))
                while len(pending) >= config.batch_size:
                    batch, pending = pending[: config.batch_size], pending[config.batch_size :]
                    writer.write([tile.item for tile in batch], embed_tiles(batch, encoder))
    if pending:
        writer.write([tile.item for tile in pending], embed_tiles(pending, encoder))
    return writer.close()


def _begin(tiled: TiledImage, writer: IngestWriter) -> list[Tile]:
    """Register an image with the writer; its tiles not already stored."""
    fresh = writer.begin(
        tiled.raw.journal_key,
        tiled.raw.file_hash,
        [tile.item.content_hash for tile in tiled.tiles],
        tiled.background,
    )
    return [tile for tile, new in zip(tiled.tiles, fresh, strict=True) if new]


def _count_skipped(
    outcome: FinishedBefore | DuplicateFile | Unreadable, writer: IngestWriter
) -> None:
    match outcome:
        case FinishedBefore(image):
            writer.skipped(str(image.path), SeenBefore(None))
        case DuplicateFile(image, twin):
            writer.skipped(str(image.path), SeenBefore(twin))
        case Unreadable(image, reason):
            writer.unreadable(str(image.path), reason)


class _Window:
    """How many images to prepare ahead: about two batches of tiles, so the workers decode the
    next batch while the model embeds this one, but large images (many tiles each, hundreds of
    MB decoded) are never held more than a few at a time."""

    def __init__(self, config: PipelineConfig) -> None:
        self._batch_size = config.batch_size
        self._floor = max(2, 2 * config.workers)
        self._ceiling = max(self._floor, 2 * config.batch_size)
        self._ahead = self._floor
        self._tiles = 0
        self._images = 0

    def ahead(self) -> int:
        return self._ahead

    def saw(self, tiled: TiledImage) -> None:
        self._tiles += len(tiled.tiles) + tiled.background
        self._images += 1
        per_image = max(1.0, self._tiles / self._images)
        self._ahead = int(min(self._ceiling, max(self._floor, 2 * self._batch_size / per_image)))
