"""Whole-slide images: GET /slides/{id}, its Deep Zoom descriptor and tiles, slides of a search,
and the search with a region of a slide (`plan_slide_region`, `search_slide_region`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from PIL import Image

from indexer.index.records import ItemRecord
from indexer.index.slides import RankedHit, RankedSlide, SlideRecord, rank_slides
from service.deps import EngineDep, SettingsDep
from service.engine import FORWARD_COST, SearchEngine
from service.errors import ErrorCode, ServiceError
from service.imaging import DecodedImage
from service.routes.responses import error_responses
from service.slide_library import (
    RegionRefusedError,
    SlideLibrary,
    SlideRegion,
    SlideUnavailableError,
    TileOutOfRangeError,
    display_name,
)
from service.slide_schemas import SlideLevel, SlideMetadata, SlideResult, SlideTileHit

router = APIRouter(tags=["slides"])

SlideId = Annotated[str, Path(max_length=64, description="A slide id from a search or an item.")]
# The key, where the settings require one, is the app's to add (service.app).
_ERRORS = error_responses(404, 422, 503)
_CACHEABLE = {"Cache-Control": "private, max-age=3600"}


async def get_slide_library(
    request: Request, engine: EngineDep, settings: SettingsDep
) -> SlideLibrary:
    """The app's slide library, opened on first use from the loaded index's directory."""
    library: SlideLibrary | None = getattr(request.app.state, "slide_library", None)
    if library is None:
        directory, roots = engine.index.directory, settings.archive_roots
        library = await engine.offload(lambda: SlideLibrary(directory, roots))
        # Another request may have opened one meanwhile: keep the first, close ours.
        existing: SlideLibrary | None = getattr(request.app.state, "slide_library", None)
        if existing is not None:
            library.close()
            return existing
        request.app.state.slide_library = library
    return library


SlidesDep = Annotated[SlideLibrary, Depends(get_slide_library)]


def dzi_url(slide_id: str) -> str:
    return f"/slides/{slide_id}.dzi"


def slide_results(hits: Sequence[tuple[float, ItemRecord]], limit: int) -> list[SlideResult]:
    """The slides among ranked hits (best first), by the rule of `indexer.index.slides`."""
    ranked = [RankedHit(rank, score, record) for rank, (score, record) in enumerate(hits, start=1)]
    return [
        _slide_result(number, slide) for number, slide in enumerate(rank_slides(ranked, limit), 1)
    ]


def _slide_result(rank: int, slide: RankedSlide) -> SlideResult:
    first = slide.hits[0].record
    return SlideResult(
        slide_id=slide.slide_id,
        rank=rank,
        best_score=slide.best_score,
        hit_count=slide.hit_count,
        label=first.label,
        group=first.group,
        dataset=first.dataset,
        url=f"/slides/{slide.slide_id}",
        dzi_url=dzi_url(slide.slide_id),
        hits=[_tile_hit(hit) for hit in slide.hits],
    )


async def plan_slide_region(
    slides: SlideLibrary,
    engine: SearchEngine,
    max_pixels: int,
    slide_id: str | None,
    box: tuple[int | None, int | None, int | None, int | None],
) -> SlideRegion:
    """The validated region of a slide a client chose (in the viewer): 404 for an unknown slide,
    422 for a region outside it or too large to read."""
    x, y, width, height = box
    if slide_id is None or x is None or y is None or width is None or height is None:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            "slide_id, x, y, width and height: a slide region needs all five "
            "(the slide's id and a level-0 rectangle)",
        )
    tiling = engine.tiling
    if tiling is None:
        raise ServiceError(404, ErrorCode.NOT_FOUND, f"no slide with id {slide_id!r} in this index")
    index_mpp = tiling.mpp
    try:
        return await slides.run(
            lambda: slides.plan_region(slide_id, (x, y, width, height), index_mpp, max_pixels)
        )
    except SlideUnavailableError as error:
        raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
    except RegionRefusedError as error:
        code = ErrorCode.REGION_TOO_LARGE if error.too_large else ErrorCode.REGION_OUTSIDE_SLIDE
        raise ServiceError(422, code, str(error)) from error


async def search_slide_region(
    engine: SearchEngine,
    slides: SlideLibrary,
    client: str,
    region: SlideRegion,
    search: Callable[[DecodedImage, float], bytes],
) -> Response:
    """Read the region from its slide and ``search`` with it (the pixels and the read's ms), on a
    search worker: reads are bounded by the workers as decodes are, never on the event loop."""

    def read_search_and_serialise() -> bytes:
        start = time.perf_counter()
        try:
            pixels = slides.read_region(region)
        except SlideUnavailableError as error:
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        return search(_region_query(region, pixels), (time.perf_counter() - start) * 1000.0)

    cost = region.pixels / 1e6 + FORWARD_COST * engine.max_query_tiles
    body = await engine.offload(read_search_and_serialise, client=client, cost=cost)
    return Response(body, media_type="application/json")


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


def _tile_hit(hit: RankedHit) -> SlideTileHit:
    x, y, width, height = hit.record.tile or (0, 0, 0, 0)
    return SlideTileHit(
        id=hit.record.id, rank=hit.rank, score=hit.score, x=x, y=y, width=width, height=height
    )


def _metadata(record: SlideRecord) -> SlideMetadata:
    return SlideMetadata(
        slide_id=record.slide_id,
        source=display_name(record.archive, record.source),
        width=record.width,
        height=record.height,
        mpp_x=record.mpp_x,
        mpp_y=record.mpp_y,
        vendor=record.vendor,
        levels=[
            SlideLevel(width=width, height=height, downsample=downsample)
            for (width, height), downsample in zip(
                record.level_dimensions, record.level_downsamples, strict=True
            )
        ],
        label=record.label,
        group=record.group,
        dataset=record.dataset,
        tile_mpp=record.tile_mpp,
        tile_size=record.tile_size,
        tiles=record.tiles,
        dzi_url=dzi_url(record.slide_id),
    )


def _not_found(error: LookupError) -> ServiceError:
    return ServiceError(404, ErrorCode.NOT_FOUND, str(error))


# The .dzi and _files routes come first: "/slides/{slide_id}" would also match "abc.dzi".


@router.get(
    "/slides/{slide_id}.dzi",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}, **_ERRORS},
)
async def get_dzi(slides: SlidesDep, slide_id: SlideId) -> Response:
    """The slide's Deep Zoom descriptor, as OpenSlide's DeepZoomGenerator writes it."""
    try:
        descriptor = await slides.run(lambda: slides.dzi(slide_id))
    except SlideUnavailableError as error:
        raise _not_found(error) from error
    return Response(descriptor, media_type="application/xml", headers=_CACHEABLE)


@router.get(
    "/slides/{slide_id}_files/{level}/{col}_{row}.jpeg",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **_ERRORS},
)
async def get_dzi_tile(
    slides: SlidesDep,
    slide_id: SlideId,
    level: Annotated[int, Path(ge=0, le=64)],
    col: Annotated[int, Path(ge=0, le=2**31)],
    row: Annotated[int, Path(ge=0, le=2**31)],
) -> Response:
    """One Deep Zoom tile (JPEG); 404 outside the slide's levels, columns and rows."""
    try:
        data = await slides.run(lambda: slides.tile(slide_id, level, col, row))
    except (SlideUnavailableError, TileOutOfRangeError) as error:
        raise _not_found(error) from error
    return Response(data, media_type="image/jpeg", headers=_CACHEABLE)


@router.get(
    "/slides/{slide_id}",
    response_model=SlideMetadata,
    responses=_ERRORS,
)
async def get_slide(slides: SlidesDep, slide_id: SlideId) -> SlideMetadata:
    """A slide's dimensions, resolution, vendor, pyramid, label and indexed tile count."""
    try:
        record = await slides.run(lambda: slides.record(slide_id))
    except SlideUnavailableError as error:
        raise _not_found(error) from error
    return _metadata(record)
