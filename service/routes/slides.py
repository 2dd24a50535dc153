"""Whole-slide images: GET /slides/{id}, its Deep Zoom descriptor and tiles, and the slides of a
search's hits (a search with a region of a slide is the engine's, `service.engine.RegionQuery`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from indexer.index.slides import RankedHit, RankedSlide, SlideRecord, rank_slides
from service.deps import EngineDep
from service.errors import ErrorCode, ServiceError
from service.routes.responses import error_responses
from service.slide_library import (
    SlideLibrary,
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


async def get_slide_library(engine: EngineDep) -> SlideLibrary:
    """The loaded engine's slide library (the index's slide registry, open slides, tiles)."""
    return engine.slides


SlidesDep = Annotated[SlideLibrary, Depends(get_slide_library)]


def dzi_url(slide_id: str) -> str:
    return f"/slides/{slide_id}.dzi"


def slide_results(hits: Sequence[RankedHit], limit: int) -> list[SlideResult]:
    """The slides among ranked hits (best first), by the rule of `indexer.index.slides`."""
    return [
        _slide_result(number, slide) for number, slide in enumerate(rank_slides(hits, limit), 1)
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
