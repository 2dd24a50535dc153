"""POST /search: the most similar archive items to one uploaded image, an item's own tile, or a
region of an indexed slide (``slide_id`` with a level-0 ``x``, ``y``, ``width``, ``height``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile

from indexer.index.slide_search import Aggregation
from indexer.index.slides import RankedHit
from indexer.index.store import SearchFilters
from service.deps import ClientDep, EngineDep, SettingsDep
from service.engine import (
    ImageQuery,
    ItemQuery,
    Query,
    RegionQuery,
    SearchEngine,
    SearchOutcome,
)
from service.errors import ErrorCode, ServiceError
from service.forms import JSON_TEXT, TEXT_PATTERN, StrictFormRoute
from service.routes.images import MAX_ITEM_ID, item_fields
from service.routes.responses import SERVER_LIMITS, UPLOAD_ERRORS, error_responses, image_parts
from service.routes.slide_search import (
    SLIDE_ONLY_FIELDS,
    SLIDE_QUERY_FIELDS,
    SLIDE_QUERY_KINDS,
    SlideForm,
    answer_slide_search,
    refuse_slide_options,
    slide_query,
)
from service.routes.slides import slide_results
from service.routes.uploads import read_upload
from service.routes.vector_search import (
    VECTOR_DESCRIPTION,
    VECTORS_DESCRIPTION,
    feature_hit,
    query_vector,
    search_by_vectors,
)
from service.schemas import (
    QueryImage,
    SearchHit,
    SearchResponse,
    Timings,
    VectorSearchResponse,
)
from service.settings import Settings
from service.slide_search_schemas import SlideSearchResponse

router = APIRouter(tags=["search"], route_class=StrictFormRoute)

FilterText = Annotated[str | None, Form(max_length=1024, pattern=TEXT_PATTERN)]
Level0 = Annotated[int | None, Form(ge=0, le=2**31, description="Level-0 px (with slide_id).")]
Extent = Annotated[int | None, Form(ge=1, le=2**31, description="Level-0 px (with slide_id).")]

_REGION_FIELDS = ["slide_id", "x", "y", "width", "height"]
# What a search is asked with, for the OpenAPI description: exactly one of an image, an item id,
# and a slide region (all five fields, without the upload's mpp).
# A slide or case query's fields and options go with none of the three (a kind of its own).
_NOT_IMAGE = [*_REGION_FIELDS, *SLIDE_QUERY_FIELDS, *SLIDE_ONLY_FIELDS]
_NOT_REGION = ["image", "item_id", "mpp", *SLIDE_QUERY_FIELDS, *SLIDE_ONLY_FIELDS]
QUERY_KINDS = [
    {"required": ["image"], "not": {"anyOf": [{"required": [f]} for f in _NOT_IMAGE]}},
    {"required": ["item_id"], "not": {"anyOf": [{"required": [f]} for f in _NOT_IMAGE]}},
    {"required": _REGION_FIELDS, "not": {"anyOf": [{"required": [f]} for f in _NOT_REGION]}},
    *SLIDE_QUERY_KINDS,
]
_VECTOR_FIELDS = ["vector", "vectors"]


def query_kinds(feature_index: bool) -> list[dict[str, Any]]:
    """`QUERY_KINDS` as this index takes them: an image index takes no vector; a feature index
    (no pixels) takes a vector, rows of vectors or an item id (its stored code), and those of
    `QUERY_KINDS` that need no pixels, each alone."""
    # Uploaded vector sets (slide_vectors) are rows of a feature index's vectors too.
    no_vector = {"not": _any_of([*_VECTOR_FIELDS, "slide_vectors"])}
    if not feature_index:
        return [
            {"allOf": [kind, no_vector]}
            for kind in QUERY_KINDS
            if kind["required"] != ["slide_vectors"]
        ]
    others = ["image", "item_id", "mpp", *_REGION_FIELDS, *_VECTOR_FIELDS]
    own = [
        {"required": [field], "not": _any_of([f for f in others if f not in (field, "mpp")])}
        if field == "item_id"
        else {"required": [field], "not": _any_of([f for f in others if f != field])}
        for field in ("item_id", *_VECTOR_FIELDS)
    ]
    without_pixels = [
        {"allOf": [kind, no_vector]}
        for kind in QUERY_KINDS
        if not {"image", "item_id", "slide_id"} & set(kind.get("required", []))
    ]
    return own + without_pixels


def _any_of(fields: list[str]) -> dict[str, Any]:
    return {"anyOf": [{"required": [field]} for field in fields]}


@router.post(
    "/search",
    # A search by `vectors` (rows of an .npy) is answered per row: a VectorSearchResponse; a
    # slide or case query ranks slides or cases: a SlideSearchResponse.
    response_model=SearchResponse | VectorSearchResponse | SlideSearchResponse,
    responses=error_responses(*UPLOAD_ERRORS, 404, *SERVER_LIMITS),
    openapi_extra=image_parts("image"),
)
async def search(
    engine: EngineDep,
    settings: SettingsDep,
    client: ClientDep,
    image: Annotated[
        UploadFile | None, File(description="The query image (JPEG, PNG, TIFF, ...).")
    ] = None,
    vector: Annotated[
        str | None, Form(description=VECTOR_DESCRIPTION, json_schema_extra=JSON_TEXT)
    ] = None,
    vectors: Annotated[UploadFile | None, File(description=VECTORS_DESCRIPTION)] = None,
    k: Annotated[int, Form(ge=1, description="How many results (at most HISTOSEARCH_MAX_K).")] = 10,
    label: Annotated[FilterText, Form(description="Only items with this label.")] = None,
    dataset: Annotated[FilterText, Form(description="Only items from this dataset.")] = None,
    exclude_group: Annotated[
        FilterText, Form(description="Leave out items of this group (e.g. the query's patient).")
    ] = None,
    item_id: Annotated[
        int | None,
        Form(ge=0, le=MAX_ITEM_ID, description="More like this: query with this item's own tile."),
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
    query_slide_id: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=1024,
            pattern=TEXT_PATTERN,
            description="Slide query: the archive's slides (or cases) most like this indexed "
            "slide (a whole-slide image's id, a feature archive's slide id, or an image's "
            "`<archive>/<path>`); answers a SlideSearchResponse.",
        ),
    ] = None,
    query_group: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=1024,
            pattern=TEXT_PATTERN,
            description="Case query: every slide of this group (patient) as one query.",
        ),
    ] = None,
    slide_vectors: Annotated[
        UploadFile | None,
        File(
            description="Slide query from an .npy of one slide's item vectors (rows x dim: the "
            "model's descriptors, or a feature archive's features)."
        ),
    ] = None,
    aggregation: Annotated[
        Aggregation | None,
        Form(description="How item matches rank slides (slide queries; default mean-max)."),
    ] = None,
    group_by: Annotated[
        Literal["slide", "group"] | None,
        Form(description="Rank slides, or cases (groups) as one (slide queries)."),
    ] = None,
    mosaic: Annotated[
        int | None,
        Form(ge=1, le=256, description="Query items searched at most (slide queries; 24)."),
    ] = None,
    include_own_group: Annotated[
        bool | None,
        Form(description="Keep the query's own patient in the answer (slide queries)."),
    ] = None,
) -> Response:
    if k > settings.max_k:
        raise ServiceError(
            422, ErrorCode.K_TOO_LARGE, f"k={k} exceeds the limit of {settings.max_k}"
        )
    slide_form = SlideForm(
        query_slide_id, query_group, slide_vectors, aggregation, group_by, mosaic, include_own_group
    )
    if slide_form.asked:
        not_slide = {"image": image, "item_id": item_id, "mpp": mpp, "slide_id": slide_id, "x": x}
        not_slide |= {"y": y, "width": width, "height": height, "label": label}
        not_slide |= {"dataset": dataset, "vector": vector, "vectors": vectors}
        slide_set = await slide_query(slide_form, not_slide, settings)
        answer = await answer_slide_search(engine, slide_set, k, exclude_group, client)
        return Response(answer, media_type="application/json")
    refuse_slide_options(slide_form)
    if vector is not None or vectors is not None:
        sent = {"image": image, "item_id": item_id, "mpp": mpp, "slide_id": slide_id}
        sent |= {"x": x, "y": y, "width": width, "height": height}
        others = [name for name, value in sent.items() if value is not None]
        filters = _filters(label, dataset, exclude_group)
        given = (vector, vectors)
        return await search_by_vectors(engine, settings, client, k, filters, given, others)
    query = await _query(image, item_id, mpp, slide_id, (x, y, width, height), settings)

    def serialise(outcome: SearchOutcome) -> bytes:
        # Built and turned into JSON in the worker that searched: the event loop only moves
        # bytes, and FastAPI does not validate and serialise the same model a second time.
        return _response(k, outcome, engine).model_dump_json().encode()

    filters = _filters(label, dataset, exclude_group)
    body = await engine.search(query, k, filters, client=client, render=serialise)
    return Response(body, media_type="application/json")


async def _query(
    image: UploadFile | None,
    item_id: int | None,
    mpp: float | None,
    slide_id: str | None,
    box: tuple[int | None, int | None, int | None, int | None],
    settings: Settings,
) -> Query:
    """Exactly one of an uploaded image, an item id and a slide region."""
    if slide_id is not None or any(value is not None for value in box):
        if image is not None or item_id is not None or mpp is not None:
            raise ServiceError(
                422,
                ErrorCode.INVALID_REQUEST,
                "slide_id: a slide region is searched alone (no image, item_id or mpp with it)",
            )
        return _region_query(slide_id, box)
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
    if item_id is not None:
        return ItemQuery(item_id, mpp)
    assert image is not None
    return ImageQuery(await read_upload(image, settings.max_upload_bytes), mpp)


def _region_query(
    slide_id: str | None, box: tuple[int | None, int | None, int | None, int | None]
) -> RegionQuery:
    x, y, width, height = box
    if slide_id is None or x is None or y is None or width is None or height is None:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            "slide_id, x, y, width and height: a slide region needs all five "
            "(the slide's id and a level-0 rectangle)",
        )
    return RegionQuery(slide_id, (x, y, width, height))


def _filters(
    label: str | None, dataset: str | None, exclude_group: str | None
) -> SearchFilters | None:
    # Blank form fields (an empty <select> in a browser) mean "no filter".
    label, dataset, exclude_group = (value or None for value in (label, dataset, exclude_group))
    if label is None and dataset is None and exclude_group is None:
        return None
    return SearchFilters(label=label, dataset=dataset, exclude_group=exclude_group)


def _hit(hit: RankedHit, exact_copy_id: int | None) -> SearchHit:
    exact_copy = hit.record.id == exact_copy_id
    return SearchHit(
        **item_fields(hit.record), score=hit.score, rank=hit.rank, exact_copy=exact_copy
    )


def _response(k: int, outcome: SearchOutcome, engine: SearchEngine) -> SearchResponse:
    if outcome.query is None and engine.features is not None:
        # "More like this" in a feature archive: an item's stored code was the query.
        return SearchResponse(
            k=k,
            results=[feature_hit(hit, outcome.exact_copy_id) for hit in outcome.hits[:k]],
            query=None,
            query_vector=query_vector(engine.features, outcome.exact_copy_id),
            timings=_timings(outcome),
        )
    assert outcome.query is not None
    width, height = outcome.query.size
    return SearchResponse(
        k=k,
        results=[_hit(hit, outcome.exact_copy_id) for hit in outcome.hits[:k]],
        slides=slide_results(outcome.hits, limit=k),
        query=QueryImage(
            width=width,
            height=height,
            format=outcome.query.original_format,
            mode=outcome.query.original_mode,
        ),
        timings=_timings(outcome),
        query_tiles=outcome.query_tiles,
        tissue_tiles=outcome.tissue_tiles,
    )


def _timings(outcome: SearchOutcome) -> Timings:
    return Timings(
        decode_ms=round(outcome.decode_ms, 3),
        embed_ms=round(outcome.embed_ms, 3),
        search_ms=round(outcome.search_ms, 3),
        total_ms=round(outcome.decode_ms + outcome.embed_ms + outcome.search_ms, 3),
    )
