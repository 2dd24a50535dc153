"""POST /search with a whole slide, a case or an uploaded vector set as the query
(``query_slide_id``, ``query_group``, ``slide_vectors``): the form's slide fields, their checks,
and the `SlideSearchResponse` (the engine's part is `service.slide_queries`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile

from indexer.index.slide_archive import DEFAULT_AGGREGATION
from indexer.index.slide_search import DEFAULT_MOSAIC, Aggregation, GroupBy
from service.engine import SearchEngine
from service.errors import ErrorCode, ServiceError
from service.routes.images import item_fields
from service.routes.uploads import read_upload
from service.settings import Settings
from service.slide_queries import RankedSlideOrCase, SlideOutcome, SlideSetQuery
from service.slide_search_schemas import (
    EvidenceItem,
    RankedSlide,
    SlideQueryInfo,
    SlideSearchResponse,
    SlideTimings,
)

SLIDE_QUERY_FIELDS = ["query_slide_id", "query_group", "slide_vectors"]
# Fields that only a slide or case query takes.
SLIDE_ONLY_FIELDS = ["aggregation", "group_by", "mosaic", "include_own_group"]
# Fields of the other query kinds (image, vector, item, region) and the filters a slide query
# does not take.
_NOT_SLIDE_FIELDS = [
    *("image", "vector", "vectors", "item_id", "mpp"),
    *("slide_id", "x", "y", "width", "height", "label", "dataset"),
]
# The OpenAPI description of the three slide query kinds (added to search.QUERY_KINDS).
SLIDE_QUERY_KINDS: list[dict[str, Any]] = [
    {
        "required": [field],
        "not": {
            "anyOf": [
                {"required": [other]}
                for other in [*SLIDE_QUERY_FIELDS, *_NOT_SLIDE_FIELDS]
                if other != field
            ]
        },
    }
    for field in SLIDE_QUERY_FIELDS
]


@dataclass(frozen=True, slots=True)
class SlideForm:
    """The slide fields of a /search form, as sent (None: absent)."""

    query_slide_id: str | None = None
    query_group: str | None = None
    slide_vectors: UploadFile | None = None
    aggregation: Aggregation | None = None
    group_by: GroupBy | None = None
    mosaic: int | None = None
    include_own_group: bool | None = None

    @property
    def asked(self) -> bool:
        """A slide or case query (one of its query fields was sent)."""
        return any(
            value is not None
            for value in (self.query_slide_id, self.query_group, self.slide_vectors)
        )

    @property
    def options_given(self) -> list[str]:
        values = (self.aggregation, self.group_by, self.mosaic, self.include_own_group)
        return [
            name for name, value in zip(SLIDE_ONLY_FIELDS, values, strict=True) if value is not None
        ]


async def slide_query(
    form: SlideForm, others: Mapping[str, object], settings: Settings
) -> SlideSetQuery:
    """The query of a slide form: exactly one query field, and no field of another query kind
    or filter that a slide query does not take (422 naming them)."""
    sent = [name for name in SLIDE_QUERY_FIELDS if getattr(form, name) is not None]
    if len(sent) > 1:
        raise ServiceError(
            422, ErrorCode.INVALID_REQUEST, f"{' and '.join(sent)}: send one of them, not both"
        )
    mixed = [name for name, value in others.items() if value is not None]
    if mixed:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            f"{', '.join(mixed)}: a slide or case query ({sent[0]}) takes none of these "
            "(only k, exclude_group, aggregation, group_by, mosaic, include_own_group)",
        )
    vectors = None
    if form.slide_vectors is not None:
        vectors = (await read_upload(form.slide_vectors, settings.max_upload_bytes)).data
    return SlideSetQuery(
        slide_id=form.query_slide_id,
        group=form.query_group,
        vectors=vectors,
        aggregation=form.aggregation or DEFAULT_AGGREGATION,
        group_by=form.group_by or "slide",
        exclude_group=None,
        include_own_group=bool(form.include_own_group),
        mosaic=form.mosaic or DEFAULT_MOSAIC,
    )


def refuse_slide_options(form: SlideForm) -> None:
    """Slide options without a slide query are a 422 naming them (not silently ignored)."""
    given = form.options_given
    if given:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            f"{', '.join(given)}: only a slide or case query (query_slide_id, query_group or "
            "slide_vectors) takes these",
        )


async def answer_slide_search(
    engine: SearchEngine,
    query: SlideSetQuery,
    k: int,
    exclude_group: str | None,
    client: str,
) -> bytes:
    """Run the query on the engine and serialise the answer on the worker."""
    if exclude_group:
        query = SlideSetQuery(
            query.slide_id, query.group, query.vectors, query.aggregation, query.group_by,
            exclude_group, query.include_own_group, query.mosaic,
        )  # fmt: skip

    def serialise(outcome: SlideOutcome) -> bytes:
        return slide_response(k, outcome, engine).model_dump_json().encode()

    return await engine.search_slides(query, k, client=client, render=serialise)


def slide_response(k: int, outcome: SlideOutcome, engine: SearchEngine) -> SlideSearchResponse:
    query = outcome.query
    return SlideSearchResponse(
        k=k,
        aggregation=query.aggregation,
        group_by=query.group_by,
        query=SlideQueryInfo(
            kind=query.kind,  # type: ignore[arg-type]  # one of the three
            id=query.slide_id if query.slide_id is not None else query.group,
            items=outcome.query_items,
            mosaic_items=outcome.mosaic_items,
            excluded_group=outcome.excluded_group,
        ),
        results=[_ranked(result, query.group_by, engine) for result in outcome.results],
        timings=SlideTimings(
            catalog_ms=round(outcome.catalog_ms, 3),
            search_ms=round(outcome.search_ms, 3),
            total_ms=round(outcome.catalog_ms + outcome.search_ms, 3),
        ),
    )


def _ranked(result: RankedSlideOrCase, group_by: GroupBy, engine: SearchEngine) -> RankedSlide:
    # A feature archive has no pixels: its items come without a thumbnail, and say so.
    pixels = engine.features is None
    evidence = [
        EvidenceItem(
            **item_fields(item.record, pixels=pixels), score=item.score, query_item=item.query_item
        )
        for item in result.evidence
    ]
    return RankedSlide(
        rank=result.rank,
        kind=group_by,
        id=result.target,
        group=result.group,
        score=result.score,
        label=evidence[0].label if evidence else None,
        viewer_url=_viewer_url(result, group_by, engine),
        evidence=evidence,
    )


def _viewer_url(result: RankedSlideOrCase, group_by: GroupBy, engine: SearchEngine) -> str | None:
    """The slide viewer with the evidence outlined, for a whole-slide image the index holds."""
    if group_by != "slide" or engine.slides.registry.get(result.target) is None:
        return None
    items = ",".join(str(item.record.id) for item in result.evidence)
    return f"/static/slide.html?id={result.target}&items={items}"
