"""POST /search: the most similar archive items to one uploaded image, an item's own tile, or a
region of an indexed slide (``slide_id`` with a level-0 ``x``, ``y``, ``width``, ``height``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from indexer.index.slides import SLIDE_POOL
from indexer.index.store import ItemRecord, SearchFilters
from service.deps import ClientDep, EngineDep, SettingsDep
from service.engine import SearchEngine, SearchOutcome, Upload
from service.errors import ErrorCode, ServiceError
from service.forms import TEXT_PATTERN, StrictFormRoute
from service.imaging import DecodedImage
from service.routes.images import item_fields
from service.routes.responses import SERVER_LIMITS, UPLOAD_ERRORS, error_responses, image_parts
from service.routes.slides import SlidesDep, plan_slide_region, search_slide_region, slide_results
from service.routes.uploads import read_upload
from service.schemas import QueryImage, SearchHit, SearchResponse, Timings
from service.slide_library import ItemSourceUnavailableError, SlideLibrary

router = APIRouter(tags=["search"], route_class=StrictFormRoute)

FilterText = Annotated[str | None, Form(max_length=1024, pattern=TEXT_PATTERN)]
Level0 = Annotated[int | None, Form(ge=0, le=2**31, description="Level-0 px (with slide_id).")]
Extent = Annotated[int | None, Form(ge=1, le=2**31, description="Level-0 px (with slide_id).")]

_REGION_FIELDS = ["slide_id", "x", "y", "width", "height"]
# What a search is asked with, for the OpenAPI description: exactly one of an image, an item id,
# and a slide region (all five fields, without the upload's mpp).
QUERY_KINDS = [
    {"required": ["image"], "not": {"anyOf": [{"required": [f]} for f in _REGION_FIELDS]}},
    {"required": ["item_id"], "not": {"anyOf": [{"required": [f]} for f in _REGION_FIELDS]}},
    {
        "required": _REGION_FIELDS,
        "not": {"anyOf": [{"required": [f]} for f in ("image", "item_id", "mpp")]},
    },
]


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=error_responses(*UPLOAD_ERRORS, 404, *SERVER_LIMITS),
    openapi_extra=image_parts("image"),
)
async def search(
    engine: EngineDep,
    settings: SettingsDep,
    client: ClientDep,
    slides: SlidesDep,
    image: Annotated[
        UploadFile | None, File(description="The query image (JPEG, PNG, TIFF, ...).")
    ] = None,
    k: Annotated[int, Form(ge=1, description="How many results (at most HISTOSEARCH_MAX_K).")] = 10,
    label: Annotated[FilterText, Form(description="Only items with this label.")] = None,
    dataset: Annotated[FilterText, Form(description="Only items from this dataset.")] = None,
    exclude_group: Annotated[
        FilterText, Form(description="Leave out items of this group (e.g. the query's patient).")
    ] = None,
    item_id: Annotated[
        int | None,
        Form(ge=0, le=2**63 - 1, description="More like this: query with this item's own tile."),
    ] = None,
    mpp: Annotated[
        float | None,
        Form(gt=0, le=1000, description="The upload's um/px (default: the index's tile mpp)."),
    ] = None,
    slide_id: Annotated[
        str | None,
        Form(
            max_length=64,
            pattern="^[0-9a-f]+$",
            description="Search with a region of this indexed slide (with x, y, width, height).",
        ),
    ] = None,
    x: Level0 = None,
    y: Level0 = None,
    width: Extent = None,
    height: Extent = None,
) -> Response:
    if k > settings.max_k:
        raise ServiceError(
            422, ErrorCode.K_TOO_LARGE, f"k={k} exceeds the limit of {settings.max_k}"
        )
    filters = _filters(label, dataset, exclude_group)
    # Slides are ranked from a wider pool of hits than k (when the index has slides at all).
    pool = max(k, SLIDE_POOL) if slides.slide_count else k
    if slide_id is not None or any(v is not None for v in (x, y, width, height)):
        if image is not None or item_id is not None or mpp is not None:
            raise ServiceError(
                422,
                ErrorCode.INVALID_REQUEST,
                "slide_id: a slide region is searched alone (no image, item_id or mpp with it)",
            )
        region = await plan_slide_region(
            slides, engine, settings.max_image_pixels, slide_id, (x, y, width, height)
        )

        def search_region_and_serialise(query: DecodedImage, read_ms: float) -> bytes:
            outcome = engine.search_decoded(
                query, pool, filters, region.mpp, read_ms, from_slide=True
            )
            return _response(k, outcome).model_dump_json().encode()

        return await search_slide_region(
            engine, slides, client, region, search_region_and_serialise
        )
    upload = await _query_upload(image, item_id, slides, engine, settings.max_upload_bytes)

    def search_and_serialise() -> bytes:
        # The response is built and turned into JSON in the worker too: the event loop only
        # moves bytes, and FastAPI does not validate and serialise the same model a second time.
        outcome = engine.search_upload(upload, pool, filters, mpp)
        return _response(k, outcome).model_dump_json().encode()

    body = await engine.offload(search_and_serialise, client=client, cost=engine.query_cost(upload))
    return Response(body, media_type="application/json")


async def _query_upload(
    image: UploadFile | None,
    item_id: int | None,
    slides: SlideLibrary,
    engine: SearchEngine,
    max_bytes: int,
) -> Upload:
    """The uploaded image, or an item's own tile re-read from its source ("more like this")."""
    if image is None and item_id is None:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            "image: a query image file is required (or item_id, to search with an item's own tile)",
        )
    if image is not None and item_id is not None:
        raise ServiceError(
            422, ErrorCode.INVALID_REQUEST, "image and item_id: send one of them, not both"
        )
    if image is not None:
        return await read_upload(image, max_bytes)
    assert item_id is not None
    try:
        data = await slides.run(lambda: slides.item_query(engine.index, item_id))
    except ItemSourceUnavailableError as error:
        raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
    return Upload(filename=f"item-{item_id}.png", data=data)


def _filters(
    label: str | None, dataset: str | None, exclude_group: str | None
) -> SearchFilters | None:
    # Blank form fields (an empty <select> in a browser) mean "no filter".
    label, dataset, exclude_group = (value or None for value in (label, dataset, exclude_group))
    if label is None and dataset is None and exclude_group is None:
        return None
    return SearchFilters(label=label, dataset=dataset, exclude_group=exclude_group)


def _hit(rank: int, score: float, record: ItemRecord, exact_copy: bool) -> SearchHit:
    return SearchHit(**item_fields(record), score=score, rank=rank, exact_copy=exact_copy)


def _response(k: int, outcome: SearchOutcome) -> SearchResponse:
    width, height = outcome.query.size
    return SearchResponse(
        k=k,
        results=[
            _hit(rank, score, record, record.id == outcome.exact_copy_id)
            for rank, (score, record) in enumerate(outcome.hits[:k], start=1)
        ],
        slides=slide_results(outcome.hits, limit=k),
        query=QueryImage(
            width=width,
            height=height,
            format=outcome.query.original_format,
            mode=outcome.query.original_mode,
        ),
        timings=Timings(
            decode_ms=round(outcome.decode_ms, 3),
            embed_ms=round(outcome.embed_ms, 3),
            search_ms=round(outcome.search_ms, 3),
            total_ms=round(outcome.decode_ms + outcome.embed_ms + outcome.search_ms, 3),
        ),
        query_tiles=outcome.query_tiles,
        tissue_tiles=outcome.tissue_tiles,
    )
