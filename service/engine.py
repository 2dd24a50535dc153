"""The work behind the routes: decode, embed and search or add, off the event loop.

Routes stay thin: they parse the request, hand :class:`SearchEngine` a query (an upload, an item
id or a slide region) or raw bytes, and turn its results into response schemas. The engine owns
every kind of query and what it costs. All CPU work runs in one bounded thread pool so that the
event loop keeps answering /health and new connections while searches saturate the cores.

`engine_from_settings` is the one way an engine is built from the service's settings, by the
plain server (`service.app.load_engine`) and on Ray Serve (`service.ray_serve.load_ray_engine`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from indexer.index.hashing import tile_hash
from indexer.index.protocol import Index
from indexer.index.records import TileBox
from indexer.index.slides import SLIDE_POOL, RankedHit
from indexer.index.store import (
    AddOutcome,
    Hit,
    ItemRecord,
    NewItem,
    SearchFilters,
)
from indexer.index.thumbnails import make_thumbnail
from model import Embedder, ModelCard, SPQModel
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel
from service.errors import ServiceError
from service.fairness import FairScheduler
from service.imaging import DecodedImage, decode_upload, decoded_megapixels
from service.regions import (
    QUERY_MIN_TISSUE,
    IndexTiling,
    aggregate_tile_hits,
    at_index_mpp,
    index_tiling,
    is_region,
    region_tiles,
    tissue_share,
)
from service.schemas import ErrorCode
from service.settings import Settings
from service.slide_library import (
    ItemSourceUnavailableError,
    RegionRefusedError,
    SlideLibrary,
    SlideRegion,
    SlideUnavailableError,
)
from service.slide_queries import SlideOutcome, SlideQueries, SlideSetQuery
from service.snapshots import Snapshotter
from service.vectors import (
    VECTOR_ROW_COST,
    FeatureKind,
    VectorOutcome,
    VectorQuery,
    image_refused,
    stored_code_descriptor,
    stored_fine_query,
    vector_refused,
)

logger = logging.getLogger(__name__)

# Images embedded per forward pass when indexing: large enough to amortise the per-call overhead,
# small enough to bound memory on a CPU-only host.
EMBED_BATCH = 32

# Work units of the fair scheduler: about a megapixel of decoding (17.5 ms of CPU on the test
# machine for PNG). One forward of the default 64 px model costs about 10 ms, half a unit; a read
# by id a small fraction of one.
FORWARD_COST = 0.5
LOOKUP_COST = 0.05
# Jobs from this cost up (about 4 MP decoded, 70 ms) leave a thread to cheap ones (fairness).
HEAVY_COST = 4.0
# Queries are decoded at reduced size when their shorter side is at least twice this many times
# the model's input side: resizing to the input afterwards makes the difference invisible.
QUERY_DECODE_FACTOR = 4


ImageEmbedder = Callable[[Sequence[Image.Image]], npt.NDArray[np.float32]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, already read within the byte limit."""

    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """Search with an uploaded image at ``mpp`` um/px (None: the index's tile mpp)."""

    upload: Upload
    mpp: float | None = None


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """More like this: search with an archive item's own tile, re-read from its source (taken to
    be at ``mpp`` um/px, as an upload of it would be)."""

    item_id: int
    mpp: float | None = None


@dataclass(frozen=True, slots=True)
class RegionQuery:
    """Search with a level-0 ``box`` (x, y, width, height) of an indexed slide."""

    slide_id: str
    box: TileBox


Query = ImageQuery | ItemQuery | RegionQuery


@dataclass(frozen=True, slots=True)
class ItemFields:
    """Client-supplied metadata for new items (metadata only: never used as a path)."""

    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """A search's ranked hits (the pool: at least k), its query image and its timings.

    ``query`` is None where no image was the query (an item's stored code in a feature index).
    """

    query: DecodedImage | None
    hits: list[RankedHit]
    decode_ms: float
    embed_ms: float
    search_ms: float
    exact_copy_id: int | None = None
    query_tiles: int = 1
    tissue_tiles: int = 1


@dataclass(frozen=True, slots=True)
class AddedUpload:
    upload: Upload
    content_hash: str
    outcome: AddOutcome


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def engine_from_settings(
    settings: Settings,
    model: SPQModel | FeatureSPQModel,
    index: Index,
    device: torch.device,
    *,
    embed: ImageEmbedder | None = None,
) -> SearchEngine:
    """The engine over an opened model and index with every limit the settings set: the one
    builder of the plain server and of Ray Serve (``embed`` there runs on the embedder
    deployment). Opens the index's slide registry, whose tile geometry region queries use."""
    slides = SlideLibrary(settings.index_dir, settings.archive_roots)
    tiling = index_tiling(slides.registry)
    if tiling is not None:
        logger.info("region queries: %d px tiles at %g um/px", tiling.tile_size, tiling.mpp)
    return SearchEngine(
        model,
        index,
        device,
        workers=settings.workers,
        max_pending=settings.max_pending,
        max_image_pixels=settings.max_image_pixels,
        max_in_flight_per_client=settings.max_requests_per_client,
        snapshot_every_changes=settings.snapshot_every_changes,
        snapshot_every_seconds=settings.snapshot_every_seconds,
        tiling=tiling,
        max_query_tiles=settings.max_query_tiles,
        slides=slides,
        embed=embed,
    )


class SearchEngine:
    """The loaded model and index, and the bounded pool that runs blocking work on them."""

    def __init__(
        self,
        model: SPQModel | FeatureSPQModel,
        index: Index,
        device: torch.device,
        *,
        workers: int,
        max_pending: int,
        max_image_pixels: int,
        max_in_flight_per_client: int = 1_000_000,
        snapshot_every_changes: int = 0,
        snapshot_every_seconds: float = 0.0,
        tiling: IndexTiling | None = None,
        max_query_tiles: int = 64,
        slides: SlideLibrary | None = None,
        embed: ImageEmbedder | None = None,
    ) -> None:
        self.model = model.eval()
        # A feature index (vectors from another model, no pixels) is queried by vector or by a
        # stored code, encoded by its own head (service/vectors.py); None for an image index.
        self.features = FeatureKind.of(model.card)
        self.feature_encoder = (
            FeatureEncoder(model, device) if isinstance(model, FeatureSPQModel) else None
        )
        # Every image the engine embeds goes through this one function (on Ray: the deployment).
        self._embed_images: ImageEmbedder = embed or _image_embedder(model, device)
        self.index = index
        self.device = device
        self.max_image_pixels = max_image_pixels
        # None (an index without slides): every upload is one query image, whatever its size.
        self.tiling = tiling
        self.max_query_tiles = max_query_tiles
        self.slides = slides if slides is not None else SlideLibrary(index.directory)
        self.query_decode_side = QUERY_DECODE_FACTOR * self.model.card.input_size
        self.scheduler = FairScheduler(
            workers=workers,
            max_pending=max_pending,
            max_in_flight_per_client=max_in_flight_per_client,
            heavy_cost=HEAVY_COST,
        )
        self.snapshots = Snapshotter(
            index, every_changes=snapshot_every_changes, every_seconds=snapshot_every_seconds
        )
        self.snapshots.start()

    @property
    def card(self) -> ModelCard:
        return self.model.card

    async def offload(
        self, function: Callable[[], T], *, client: str = "local", cost: float = LOOKUP_COST
    ) -> T:
        """Run ``function`` on a worker when ``client``'s fair turn comes (`FairScheduler`);
        refused at once with 429 or 503 when the client or the server has too much waiting."""
        return await self.scheduler.run(function, client=client, cost=cost)

    # ---- searching ---------------------------------------------------------------------------

    def pool_size(self, k: int) -> int:
        """Hits a search ranks: k, or with slides the wider pool slides are ranked from."""
        return max(k, SLIDE_POOL) if self.slides.slide_count else k

    @overload
    async def search(
        self,
        query: VectorQuery,
        k: int,
        filters: SearchFilters | None,
        *,
        client: str,
        render: Callable[[VectorOutcome], T],
    ) -> T: ...

    @overload
    async def search(
        self,
        query: Query,
        k: int,
        filters: SearchFilters | None,
        *,
        client: str,
        render: Callable[[SearchOutcome], T],
    ) -> T: ...

    async def search(
        self,
        query: Query | VectorQuery,
        k: int,
        filters: SearchFilters | None,
        *,
        client: str,
        render: Callable[[Any], T],
    ) -> T:
        """Search with any kind of query on a worker, at its cost, and ``render`` the outcome
        there too (the response is built and serialised off the event loop). A `VectorQuery`
        renders a `VectorOutcome` (one answer per row), every other kind a `SearchOutcome`."""
        pool = self.pool_size(k)
        if isinstance(query, VectorQuery):
            vectors = query.vectors
            return await self.offload(
                lambda: render(self.search_vectors(vectors, pool, filters)),
                client=client,
                cost=VECTOR_ROW_COST * len(vectors),
            )
        if self.features is not None:
            return await self._search_feature_index(query, pool, filters, client, render)
        if isinstance(query, RegionQuery):
            region = await self._planned_region(query)
            cost = region.pixels / 1e6 + FORWARD_COST * self.max_query_tiles
            return await self.offload(
                lambda: render(self._search_region(region, pool, filters)), client=client, cost=cost
            )
        if isinstance(query, ItemQuery):
            query = ImageQuery(await self._item_upload(query.item_id), query.mpp)
        upload, mpp = query.upload, query.mpp
        return await self.offload(
            lambda: render(self.search_upload(upload, pool, filters, mpp)),
            client=client,
            cost=self.query_cost(upload),
        )

    def search_vectors(
        self, vectors: npt.NDArray[np.float32], k: int, filters: SearchFilters | None
    ) -> VectorOutcome:
        """Encode checked feature rows with the index's head and search each (blocking)."""
        encoder = self._feature_encoder()
        start = time.perf_counter()
        descriptors = encoder.descriptors(vectors)
        # An index with a second stage re-ranks by the centred rows, as it stored them.
        fine = None if self.index.second_stage is None else encoder.centred(vectors)
        encode_ms = _elapsed_ms(start)
        start = time.perf_counter()
        found = self.index.search(descriptors, k, filters, fine_queries=fine)
        return VectorOutcome([_ranked(hits) for hits in found], encode_ms, _elapsed_ms(start))

    async def _search_feature_index(
        self,
        query: Query,
        k: int,
        filters: SearchFilters | None,
        client: str,
        render: Callable[[SearchOutcome], T],
    ) -> T:
        """A feature index has no pixels: only "more like this" by an item's stored code."""
        assert self.features is not None
        if not isinstance(query, ItemQuery):
            what = "a slide region" if isinstance(query, RegionQuery) else "an image query"
            raise image_refused(self.features, what)
        item_id = query.item_id
        return await self.offload(
            lambda: render(self.search_stored_code(item_id, k, filters)),
            client=client,
            cost=LOOKUP_COST + VECTOR_ROW_COST,
        )

    def search_stored_code(
        self, item_id: int, k: int, filters: SearchFilters | None
    ) -> SearchOutcome:
        """Search a feature index with the codewords of an item's stored code (blocking). The
        item itself is ranked first when it passes the filters: codes repeat, and more than k
        items can tie at its score."""
        start = time.perf_counter()
        stored = self.index.get(item_id)
        if stored is None:
            raise ServiceError(404, ErrorCode.NOT_FOUND, f"no item with id {item_id}")
        descriptor = stored_code_descriptor(self._feature_encoder(), self.index, item_id)
        fine = stored_fine_query(self.index, item_id)
        embed_ms = _elapsed_ms(start)
        start = time.perf_counter()
        found = self.index.search(descriptor, k, filters, fine_queries=fine)[0]
        hits = [hit for hit in found if hit.id != item_id]
        own_score = (
            self.index.scores_of(descriptor, [item_id])[0]
            if fine is None
            else float(np.linalg.norm(fine[0]))  # its decoded code against itself, unit query
        )
        copy_id = None
        if own_score is not None and _passes(stored, filters):
            hits = [Hit(item_id, own_score, stored), *hits][:k]
            copy_id = item_id
        search_ms = _elapsed_ms(start)
        return SearchOutcome(None, _ranked(hits), 0.0, embed_ms, search_ms, copy_id)

    def _feature_encoder(self) -> FeatureEncoder:
        if self.feature_encoder is None:
            raise vector_refused()
        return self.feature_encoder

    def query_cost(self, upload: Upload) -> float:
        """Work units of one search: the pixels its decode will produce, and one forward."""
        if self.tiling is not None:
            # A possible region query: decoded in full, and up to max_query_tiles forwards.
            return decoded_megapixels(upload.data) + FORWARD_COST * self.max_query_tiles
        pixels = decoded_megapixels(upload.data, reduce_to=self.query_decode_side)
        return pixels + FORWARD_COST

    def upload_cost(self, uploads: Sequence[Upload]) -> float:
        """Work units of adding these files: each is decoded in full and embedded."""
        if self.features is not None:
            raise image_refused(self.features, "an image upload")
        return sum(decoded_megapixels(upload.data) + FORWARD_COST for upload in uploads)

    def decode(self, upload: Upload, *, as_query: bool = False) -> DecodedImage:
        return decode_upload(
            upload.data,
            max_pixels=self.max_image_pixels,
            filename=upload.filename,
            reduce_to=self.query_decode_side if as_query else None,
        )

    def embed(self, images: Sequence[DecodedImage]) -> npt.NDArray[np.float32]:
        """(N, D) float32 continuous descriptors; the queries are never quantised."""
        return self._embed_images([image.rgb for image in images])

    def search_upload(
        self, upload: Upload, k: int, filters: SearchFilters | None, mpp: float | None = None
    ) -> SearchOutcome:
        """Decode, embed and search one query (blocking: call through :meth:`offload`).

        In an index with slides, an upload larger than one of its tiles at its mpp is a region
        query (`service.regions`), decoded in full; any other upload is embedded whole.
        """
        start = time.perf_counter()
        if self.tiling is None:
            query = self.decode(upload, as_query=True)
            return self._search_image(query, k, filters, _elapsed_ms(start))
        query = self.decode(upload)
        return self.search_decoded(query, k, filters, mpp, _elapsed_ms(start))

    def search_decoded(
        self,
        query: DecodedImage,
        k: int,
        filters: SearchFilters | None,
        mpp: float | None = None,
        decode_ms: float = 0.0,
        *,
        from_slide: bool = False,
    ) -> SearchOutcome:
        """Search with an image already in memory at ``mpp`` um/px (an upload decoded in full, or
        a region read from a slide), which took ``decode_ms`` to get (blocking, as above).

        A region of a slide no larger than one tile is refused when it holds too little tissue
        to have been indexed (a click on glass): an upload of one tile is searched as it is.
        """
        start = time.perf_counter()
        tiling = self.tiling
        if tiling is None:
            return self._search_image(query, k, filters, decode_ms + _elapsed_ms(start))
        scaled = at_index_mpp(query.rgb, tiling.mpp if mpp is None else mpp, tiling)
        if not is_region(scaled, tiling):
            if from_slide:
                _require_tissue(query, scaled, tiling)
            return self._search_image(query, k, filters, decode_ms + _elapsed_ms(start))
        region = region_tiles(scaled, tiling, self.max_query_tiles)
        decode_ms += _elapsed_ms(start)
        if not region.tiles:
            raise _no_tissue(query, tiling)
        start = time.perf_counter()
        descriptors = self._embed_images(region.tiles)
        embed_ms = _elapsed_ms(start)
        start = time.perf_counter()
        scores, ids = self.index.search_arrays(descriptors, k, filters)
        ranked = aggregate_tile_hits(scores, ids, k)
        # One read per item (at most N): `get` is what every index kind answers, sharded or not.
        hits = [Hit(item_id, score, self.index.get(item_id)) for item_id, score in ranked]
        search_ms = _elapsed_ms(start)
        return SearchOutcome(
            query,
            _ranked(hits),
            decode_ms,
            embed_ms,
            search_ms,
            query_tiles=len(region.tiles),
            tissue_tiles=region.tissue_tiles,
        )

    def _search_image(
        self, query: DecodedImage, k: int, filters: SearchFilters | None, decode_ms: float
    ) -> SearchOutcome:
        start = time.perf_counter()
        descriptor = self.embed([query])
        embed_ms = _elapsed_ms(start)
        start = time.perf_counter()
        found = self.index.search(descriptor, k, filters)[0]
        # A hit without a record was removed between the scan and the metadata read: drop it.
        hits = [hit for hit in found if hit.record is not None]
        copy = self._exact_copy(query, descriptor, hits, filters)
        if copy is not None:
            hits = [copy, *(hit for hit in hits if hit.id != copy.id)][:k]
        search_ms = _elapsed_ms(start)
        copy_id = None if copy is None else copy.id
        return SearchOutcome(query, _ranked(hits), decode_ms, embed_ms, search_ms, copy_id)

    def _exact_copy(
        self,
        query: DecodedImage,
        descriptor: np.ndarray,
        hits: Sequence[Hit],
        filters: SearchFilters | None,
    ) -> Hit | None:
        """The archive item whose content hash is the query's own (the uploaded file itself,
        stored as a whole-image tile), with its score, when it passes the filters.

        32-bit codes repeat: more than k items can tie at the top score, and ties come back in id
        order, so without this the image itself is often not among the hits at all.
        """
        content_hash = tile_hash(query.file_hash, (0, 0, *query.size))
        item_id = self.index.known_hashes([content_hash]).get(content_hash)
        if item_id is None:
            return None
        for hit in hits:
            if hit.id == item_id:
                return hit
        stored = self.index.get(item_id)
        stored_score = self.index.scores_of(descriptor, [item_id])[0]
        if stored is None or stored_score is None or not _passes(stored, filters):
            return None
        return Hit(item_id, stored_score, stored)

    async def _item_upload(self, item_id: int) -> Upload:
        """An item's own tile, re-read from its source in the slide pool, as a PNG upload
        (404 naming the item, never a stored path, when it cannot be read)."""
        slides, index = self.slides, self.index
        try:
            data = await slides.run(lambda: slides.item_query(index, item_id))
        except ItemSourceUnavailableError as error:
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        return Upload(filename=f"item-{item_id}.png", data=data)

    async def _planned_region(self, query: RegionQuery) -> SlideRegion:
        """The validated region of a slide a client chose (in the viewer): 404 for an unknown
        slide, 422 for a region outside it or too large to read."""
        tiling = self.tiling
        if tiling is None:
            raise ServiceError(
                404, ErrorCode.NOT_FOUND, f"no slide with id {query.slide_id!r} in this index"
            )
        slides, limit = self.slides, self.max_image_pixels
        try:
            return await slides.run(
                lambda: slides.plan_region(query.slide_id, query.box, tiling.mpp, limit)
            )
        except SlideUnavailableError as error:
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        except RegionRefusedError as error:
            code = ErrorCode.REGION_TOO_LARGE if error.too_large else ErrorCode.REGION_OUTSIDE_SLIDE
            raise ServiceError(422, code, str(error)) from error

    def _search_region(
        self, region: SlideRegion, k: int, filters: SearchFilters | None
    ) -> SearchOutcome:
        """Read a planned region from its slide and search with it (blocking: on a worker, so
        reads are bounded by the workers as decodes are)."""
        start = time.perf_counter()
        try:
            pixels = self.slides.read_region(region)
        except SlideUnavailableError as error:
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        query = _region_query(region, pixels)
        return self.search_decoded(
            query, k, filters, region.mpp, _elapsed_ms(start), from_slide=True
        )

    # ---- slide and case queries (service.slide_queries) -------------------------------------

    @functools.cached_property
    def slide_queries(self) -> SlideQueries:
        """The index's slides, read when the first slide or case query comes."""
        registry = self.slides.registry
        return SlideQueries(
            self.index, self.feature_encoder, lambda slide_id: registry.get(slide_id) is not None
        )

    async def search_slides(
        self,
        query: SlideSetQuery,
        k: int,
        *,
        client: str,
        render: Callable[[SlideOutcome], T],
    ) -> T:
        """Rank the archive's slides or cases for a slide, case or vector-set query on a worker,
        at the cost of its item searches, and ``render`` the outcome there."""
        queries = self.slide_queries
        return await self.offload(
            lambda: render(queries.run(query, k)), client=client, cost=queries.cost(query)
        )

    # ---- changing the archive ----------------------------------------------------------------

    def add_uploads(self, uploads: Sequence[Upload], fields: ItemFields) -> list[AddedUpload]:
        """Decode every upload first (one bad file refuses the whole request), then embed and add.

        Returns once the store reports the additions durable.
        """
        if self.features is not None:
            raise image_refused(self.features, "an image upload")
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
        self.scheduler.close()
        self.snapshots.close()
        self.slides.close()
        self.index.close()


def _image_embedder(model: SPQModel | FeatureSPQModel, device: torch.device) -> ImageEmbedder:
    """The local embedder of an image model; a feature model has none (it never sees pixels)."""
    if isinstance(model, SPQModel):
        return Embedder(model, device, batch_size=EMBED_BATCH).embed
    kind = FeatureKind.of(model.card)
    assert kind is not None

    def refuse(images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        raise image_refused(kind)

    return refuse


def _ranked(hits: Sequence[Hit]) -> list[RankedHit]:
    """The hits with a record, ranked from 1: one without a record was removed between the scan
    and the metadata read, and is dropped."""
    ranked: list[RankedHit] = []
    for hit in hits:
        if hit.record is not None:
            ranked.append(RankedHit(len(ranked) + 1, hit.score, hit.record))
    return ranked


def _region_query(region: SlideRegion, pixels: Image.Image) -> DecodedImage:
    # The hash names the region (slide, level, box), never matching an uploaded file's.
    name = f"{region.slide_id}:{region.level}:{region.box}".encode()
    return DecodedImage(
        rgb=pixels,
        original_format="slide",
        original_mode="RGBA",
        file_hash=hashlib.sha256(name).hexdigest(),
        size=pixels.size,
    )


def _passes(record: ItemRecord, filters: SearchFilters | None) -> bool:
    if filters is None:
        return True
    return (
        (filters.label is None or record.label == filters.label)
        and (filters.dataset is None or record.dataset == filters.dataset)
        and (filters.exclude_group is None or record.group != filters.exclude_group)
    )


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


def _require_tissue(query: DecodedImage, scaled: Image.Image, tiling: IndexTiling) -> None:
    """Refuse a region of one tile at most whose tissue share the indexer would not have kept."""
    share = tissue_share(scaled, tiling)
    if share < QUERY_MIN_TISSUE:
        width, height = query.size
        raise ServiceError(
            422,
            ErrorCode.NO_TISSUE,
            f"the {width}x{height} region is {share:.0%} tissue (the rest glass or black; the "
            f"archive's tiles have at least {QUERY_MIN_TISSUE:.0%}): choose a region of stained "
            "tissue",
        )


def _no_tissue(query: DecodedImage, tiling: IndexTiling) -> ServiceError:
    width, height = query.size
    return ServiceError(
        422,
        ErrorCode.NO_TISSUE,
        f"the {width}x{height} region has no {tiling.tile_size} px tile with tissue "
        "(only glass or black): choose a region of stained tissue",
    )
