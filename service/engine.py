"""The work behind the routes: decode, embed and search or add, off the event loop.

Routes stay thin: they parse the request, hand raw bytes to :class:`SearchEngine`, and turn its
results into response schemas. All CPU work runs in one bounded thread pool so that the event loop
keeps answering /health and new connections while searches saturate the cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from indexer.index.hashing import tile_hash
from indexer.index.store import AddOutcome, ArchiveIndex, ItemRecord, NewItem, SearchFilters
from indexer.index.thumbnails import make_thumbnail
from model import Embedder, ModelCard, SPQModel
from service.errors import ServiceError
from service.imaging import DecodedImage, decode_upload
from service.snapshots import Snapshotter

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Images embedded per forward pass when indexing: large enough to amortise the per-call overhead,
# small enough to bound memory on a CPU-only host.
EMBED_BATCH = 32


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, already read within the byte limit."""

    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ItemFields:
    """Client-supplied metadata for new items (metadata only: never used as a path)."""

    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    query: DecodedImage
    hits: list[tuple[float, ItemRecord]]
    decode_ms: float
    embed_ms: float
    search_ms: float


@dataclass(frozen=True, slots=True)
class AddedUpload:
    upload: Upload
    content_hash: str
    outcome: AddOutcome


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class SearchEngine:
    """The loaded model and index, and the bounded pool that runs blocking work on them."""

    def __init__(
        self,
        model: SPQModel,
        index: ArchiveIndex,
        device: torch.device,
        *,
        workers: int,
        max_pending: int,
        max_image_pixels: int,
        snapshot_every_changes: int = 0,
        snapshot_every_seconds: float = 0.0,
    ) -> None:
        self.embedder = Embedder(model.eval(), device, batch_size=EMBED_BATCH)
        self.model = self.embedder.model
        self.index = index
        self.device = device
        self.max_image_pixels = max_image_pixels
        self._max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="histosearch")
        self.snapshots = Snapshotter(
            index, every_changes=snapshot_every_changes, every_seconds=snapshot_every_seconds
        )
        self.snapshots.start()

    @property
    def card(self) -> ModelCard:
        return self.model.card

    async def offload(self, function: Callable[[], T]) -> T:
        """Run ``function`` in the pool; refuse at once (503) when too many requests already wait.

        The counter is only touched on the event loop thread, so it needs no lock.
        """
        if self._pending >= self._max_pending:
            raise ServiceError(
                503,
                "server_busy",
                f"{self._pending} requests are already waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, function)
        finally:
            self._pending -= 1

    def decode(self, upload: Upload) -> DecodedImage:
        return decode_upload(
            upload.data, max_pixels=self.max_image_pixels, filename=upload.filename
        )

    def embed(self, images: Sequence[DecodedImage]) -> npt.NDArray[np.float32]:
        """(N, D) float32 continuous descriptors; the queries are never quantised."""
        return self.embedder.embed([image.rgb for image in images])

    def search_upload(self, upload: Upload, k: int, filters: SearchFilters | None) -> SearchOutcome:
        """Decode, embed and search one query image (blocking: call through :meth:`offload`)."""
        start = time.perf_counter()
        query = self.decode(upload)
        decode_ms = _elapsed_ms(start)
        start = time.perf_counter()
        descriptor = self.embed([query])
        embed_ms = _elapsed_ms(start)
        start = time.perf_counter()
        found = self.index.search(descriptor, k, filters)[0]
        # A hit without a record was removed between the scan and the metadata read: drop it.
        hits = [(hit.score, hit.record) for hit in found if hit.record is not None]
        search_ms = _elapsed_ms(start)
        return SearchOutcome(query, hits, decode_ms, embed_ms, search_ms)

    def add_uploads(self, uploads: Sequence[Upload], fields: ItemFields) -> list[AddedUpload]:
        """Decode every upload first (one bad file refuses the whole request), then embed and add.

        Returns once the store reports the additions durable.
        """
        decoded = [self.decode(upload) for upload in uploads]
        descriptors = self.embed(decoded)
        records = [
            _new_item(image, fields, upload.filename)
            for image, upload in zip(decoded, uploads, strict=True)
        ]
        outcomes = self.index.add(descriptors, records)
        self.snapshots.changed()
        new = sum(outcome.duplicate_of is None for outcome in outcomes)
        logger.info("indexed %d upload(s): %d new", len(uploads), new)
        return [
            AddedUpload(upload, record.content_hash, outcome)
            for upload, record, outcome in zip(uploads, records, outcomes, strict=True)
        ]

    def remove(self, item_id: int) -> bool:
        removed = self.index.remove([item_id]) > 0
        self.snapshots.changed()
        return removed

    def close(self) -> None:
        """Finish running work, stop periodic snapshots, then close (and flush) the index."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.snapshots.close()
        self.index.close()


def _new_item(image: DecodedImage, fields: ItemFields, image_name: str) -> NewItem:
    width, height = image.size
    # An upload is one whole-image tile, hashed as the indexer hashes such a tile, so a file
    # indexed from disk and the same file uploaded are recognised as one item.
    box = (0, 0, width, height)
    return NewItem(
        source=fields.source or image_name,
        label=fields.label,
        group=fields.group,
        dataset=fields.dataset,
        tile=box,
        source_size=(width, height),
        content_hash=tile_hash(image.file_hash, box),
        thumbnail=make_thumbnail(image.rgb),
        extra={"format": image.original_format, "mode": image.original_mode},
    )
