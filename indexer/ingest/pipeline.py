"""Encoding an archive into an index: read -> decode -> tile -> embed -> write.

Each stage is a plain function so it can be tested alone; `index_archive` runs them with reading,
decoding and tiling in a thread pool (PIL releases the GIL while decoding) while the calling
thread embeds full batches and writes them.

Resuming: the index's SQLite rows are the journal. A source image is marked finished (with its
file hash) in the same database once all its tiles are written; a later run skips finished files,
and tiles of a half-written image that are already stored (same content hash) are not embedded
again. Files with the same bytes as a finished one are recognised as duplicates.

Unreadable images (a file that cannot be read, bytes that do not decode to RGB pixels) are
logged, counted and listed in the summary, and the run goes on. Only reading and decoding are
guarded: an error in tiling, embedding or writing is a bug or a broken index and stops the run.

The embedding stage takes any `Encoder`; programs pass a `model.Embedder`.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.index.hashing import file_hash, tile_hash
from indexer.index.metadata import FinishedSource
from indexer.index.records import NewItem, TileBox
from indexer.index.store import ArchiveIndex
from indexer.index.thumbnails import make_thumbnail
from indexer.ingest.archive_root import ArchiveRoot, journal_key
from indexer.ingest.sources import ArchiveImage
from indexer.ingest.tiling import TilingConfig, has_tissue, tile_boxes
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


@dataclass(slots=True)
class IndexingSummary:
    """Counts of one run; ``unreadable`` lists (path, reason)."""

    images: int = 0
    images_finished_before: int = 0
    duplicate_files: int = 0
    tiles_added: int = 0
    tiles_already_indexed: int = 0
    tiles_duplicate: int = 0
    tiles_background: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"images seen:             {self.images}",
            f"finished in earlier runs: {self.images_finished_before}",
            f"duplicate files:         {self.duplicate_files}",
            f"unreadable images:       {len(self.unreadable)}",
            f"tiles added:             {self.tiles_added}",
            f"tiles already indexed:   {self.tiles_already_indexed}",
            f"duplicate tiles:         {self.tiles_duplicate}",
            f"background tiles:        {self.tiles_background}",
            f"seconds:                 {self.seconds:.1f}",
        ]


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


def write_tiles(
    index: ArchiveIndex, tiles: Sequence[Tile], descriptors: npt.NDArray[np.float32]
) -> int:
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


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Batching and parallelism of a run."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    batch_size: int = 64
    workers: int = 2
    flush_every: int = 50_000
    progress: bool = True


@dataclass(slots=True)
class _Pending:
    """Tiles waiting for a full batch, and how many tiles each source still waits for."""

    tiles: list[Tile] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)
    finished: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def prepare(
    image: ArchiveImage, index: ArchiveIndex, config: TilingConfig, root: ArchiveRoot | None = None
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
    names = (raw.journal_key, str(image.path))
    if raw.file_hash in (index.finished_source(name) for name in names):
        return FinishedBefore(image)
    twin = index.source_with_hash(raw.file_hash)
    if twin is not None and twin not in names:
        return DuplicateFile(image, twin)
    try:
        pixels = decode_image(raw)
    except UNREADABLE as error:
        return Unreadable.because(image, error)
    return cut_tiles(raw, pixels, config)


def index_archive(
    images: Sequence[ArchiveImage],
    index: ArchiveIndex,
    encoder: Encoder,
    config: PipelineConfig | None = None,
    archive_root: Path | None = None,
) -> IndexingSummary:
    """Index every image of an archive into ``index``; see the module doc for resuming.

    Sources are stored relative to ``archive_root`` (default: the folder holding every image).
    """
    config = config or PipelineConfig()
    root = ArchiveRoot.of([image.path for image in images], archive_root)
    summary, pending = IndexingSummary(), _Pending()
    started = time.perf_counter()
    since_flush = 0
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        prepared = _prefetched(pool, images, index, config, root)
        for outcome in _progress(prepared, len(images), config.progress):
            summary.images += 1
            if not isinstance(outcome, TiledImage):
                _count_skipped(outcome, summary)
                continue
            _queue(outcome, index, pending, summary)
            wrote = False
            while len(pending.tiles) >= config.batch_size:
                since_flush += _write_batch(index, encoder, pending, summary, config.batch_size)
                wrote = True
            # One journal commit per written batch (or per batch's worth of images), not per image.
            if wrote or len(pending.waiting) >= config.batch_size:
                _finish_sources(index, pending)
            if since_flush >= config.flush_every:
                index.flush()
                since_flush = 0
        while pending.tiles:
            _write_batch(index, encoder, pending, summary, config.batch_size)
        _finish_sources(index, pending)
    index.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _count_skipped(
    outcome: FinishedBefore | DuplicateFile | Unreadable, summary: IndexingSummary
) -> None:
    match outcome:
        case FinishedBefore():
            summary.images_finished_before += 1
        case DuplicateFile():
            summary.duplicate_files += 1
        case Unreadable(image, reason):
            summary.unreadable.append((str(image.path), reason))
            log.warning("skipping unreadable image %s: %s", image.path, reason)


def _prefetched(
    pool: ThreadPoolExecutor,
    images: Sequence[ArchiveImage],
    index: ArchiveIndex,
    config: PipelineConfig,
    root: ArchiveRoot,
) -> Iterator[Prepared]:
    """Results of `prepare` in archive order, with a bounded number of images in flight.

    The bound follows the tiles an image yields: about two batches of tiles stay prepared ahead,
    so the workers decode the next batch while the model embeds this one, but large slides (many
    tiles each, hundreds of MB decoded) are never held more than a few at a time.
    """
    floor, ceiling = max(2, 2 * config.workers), max(2, 2 * config.workers, 2 * config.batch_size)
    ahead, tiles_seen, images_seen = floor, 0, 0
    futures: deque[Future[Prepared]] = deque()
    queue = iter(images)
    while True:
        while len(futures) < ahead and (image := next(queue, None)) is not None:
            futures.append(pool.submit(prepare, image, index, config.tiling, root))
        if not futures:
            return
        # A bug raised while preparing is raised here again, and stops the run.
        outcome = futures.popleft().result()
        if isinstance(outcome, TiledImage):
            tiles_seen += len(outcome.tiles) + outcome.background
            images_seen += 1
            per_image = max(1.0, tiles_seen / images_seen)
            ahead = int(min(ceiling, max(floor, 2 * config.batch_size / per_image)))
        yield outcome


def _progress(items: Iterable[Prepared], total: int, show: bool) -> Iterable[Prepared]:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="image", desc="indexing")  # type: ignore[no-any-return]


def _queue(
    tiled: TiledImage, index: ArchiveIndex, pending: _Pending, summary: IndexingSummary
) -> None:
    """Queue the tiles not already stored; remember what finishing this source means."""
    summary.tiles_background += tiled.background
    stored = index.known_hashes([tile.item.content_hash for tile in tiled.tiles])
    fresh = [tile for tile in tiled.tiles if tile.item.content_hash not in stored]
    summary.tiles_already_indexed += len(tiled.tiles) - len(fresh)
    source = tiled.raw.journal_key
    pending.tiles.extend(fresh)
    pending.waiting[source] = pending.waiting.get(source, 0) + len(fresh)
    pending.finished[source] = (tiled.raw.file_hash, len(tiled.tiles), tiled.background)


def _write_batch(
    index: ArchiveIndex,
    encoder: Encoder,
    pending: _Pending,
    summary: IndexingSummary,
    batch_size: int,
) -> int:
    batch, pending.tiles = pending.tiles[:batch_size], pending.tiles[batch_size:]
    added = write_tiles(index, batch, embed_tiles(batch, encoder))
    summary.tiles_added += added
    summary.tiles_duplicate += len(batch) - added
    for tile in batch:
        pending.waiting[journal_key(tile.item.archive, tile.item.source)] -= 1
    return added


def _finish_sources(index: ArchiveIndex, pending: _Pending) -> None:
    """Journal every source whose tiles are all written, in one commit."""
    done = [source for source, count in pending.waiting.items() if count == 0]
    finished = []
    for source in done:
        file_hash, items, skipped = pending.finished.pop(source)
        finished.append(FinishedSource(source, file_hash, items, skipped))
        del pending.waiting[source]
    index.mark_sources_finished(finished)
