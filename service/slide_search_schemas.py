"""The answer to a slide or case query (POST /search with ``query_slide_id``, ``query_group`` or
``slide_vectors``): ranked slides or cases, each with its best archive items as evidence."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from indexer.index.slide_search import Aggregation
from service.schemas import ItemMetadata


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True)


class EvidenceItem(ItemMetadata):
    """An archive item of a ranked slide or case that matched one of the query's items."""

    score: float = Field(description="The item's ADC score for that query item; higher is closer.")
    query_item: int = Field(
        ge=0, description="Which of the query's (mosaic) items found it, counted from 0."
    )


class RankedSlide(_Schema):
    """One ranked slide (``group_by=slide``) or case (``group_by=group``)."""

    rank: int = Field(ge=1)
    kind: Literal["slide", "group"]
    id: str = Field(
        description="The slide id (a whole-slide image's id, a feature archive's slide id, or "
        "`<archive>/<path>` of an image), or the group (case, patient) id."
    )
    group: str = Field(description="The slide's group (patient); for a case, itself.")
    score: float = Field(description="The aggregation's score; higher is closer.")
    label: str | None = Field(default=None, description="The label of its best evidence item.")
    viewer_url: str | None = Field(
        default=None,
        description="The slide viewer with the evidence outlined (whole-slide images only).",
    )
    evidence: list[EvidenceItem]


class SlideQueryInfo(_Schema):
    kind: Literal["slide", "group", "vectors"]
    id: str | None = Field(default=None, description="The query slide or group; null for vectors.")
    items: int = Field(description="Items of the query slide(s) or rows of the uploaded set.")
    mosaic_items: int = Field(description="Items searched: at most `mosaic` chosen without labels.")
    excluded_group: str | None = Field(
        description="The group left out of the answer (by default the query's own patient)."
    )


class SlideTimings(_Schema):
    catalog_ms: float = Field(description="Reading the archive's slides (0 once cached).")
    search_ms: float
    total_ms: float


class SlideSearchResponse(_Schema):
    k: int
    aggregation: Aggregation
    group_by: Literal["slide", "group"]
    query: SlideQueryInfo
    results: list[RankedSlide]
    timings: SlideTimings
