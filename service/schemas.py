"""The service's vocabulary: every request and response body, typed, so OpenAPI documents them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.slide_schemas import SlideResult


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- errors ---------------------------------------------------------------------------------------


class ErrorResponse(_Schema):
    """Every 4xx and 5xx answer has this shape."""

    code: str = Field(description="Stable machine-readable error code, e.g. `corrupt_image`.")
    detail: str = Field(description="What was wrong, in words, and how to fix it where possible.")


# --- shared pieces --------------------------------------------------------------------------------


class TilePosition(_Schema):
    """Where a tile lies in its source image, in source pixels."""

    x: int
    y: int
    width: int
    height: int


class ImageSize(_Schema):
    width: int
    height: int


class ItemMetadata(_Schema):
    """What the archive knows about one item."""

    id: int
    label: str | None = None
    group: str | None = None
    dataset: str | None = None
    source: str | None = Field(default=None, description="Where the tile came from (text only).")
    tile: TilePosition | None = None
    source_size: ImageSize | None = None
    added_at: datetime | None = None
    thumbnail_url: str
    extra: dict[str, Any] = Field(default_factory=dict)


# --- search ---------------------------------------------------------------------------------------


class SearchHit(ItemMetadata):
    score: float = Field(description="Sum of per-sub-space cosines; higher is closer.")
    rank: int = Field(ge=1)


class QueryImage(_Schema):
    width: int
    height: int
    format: str
    mode: str = Field(description="Pixel mode of the upload before conversion to RGB.")


class Timings(_Schema):
    decode_ms: float
    embed_ms: float
    search_ms: float
    total_ms: float = Field(description="Decode + embed + search; no network or upload parsing.")


class SearchResponse(_Schema):
    k: int
    results: list[SearchHit]
    query: QueryImage
    timings: Timings
    slides: list[SlideResult] = Field(
        default_factory=list,
        description="Slides of the top results (up to 100), best first; empty without slides.",
    )


# --- index ----------------------------------------------------------------------------------------


class AddStatus(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"


class AddedImage(_Schema):
    filename: str
    id: int = Field(description="The new item's id, or the existing item's id for a duplicate.")
    status: AddStatus
    content_hash: str


class IndexResponse(_Schema):
    items: list[AddedImage]
    added: int
    duplicates: int
    total_items: int = Field(description="Items in the archive after this request.")


class DeleteResponse(_Schema):
    id: int
    deleted: bool


# --- system ---------------------------------------------------------------------------------------


class HealthResponse(_Schema):
    status: str = "alive"


class ReadyResponse(_Schema):
    status: str = "ready"
    items: int


class StatsResponse(_Schema):
    items: int
    code_bytes: int = Field(description="Bytes per stored code.")
    bits: int = Field(description="Bits per stored code (M * log2 K).")
    descriptor_dim: int
    max_k: int = Field(description="Largest k a search may ask for.")
    labels: dict[str, int] = Field(description="Items per label (`(none)` for unlabelled).")
    datasets: dict[str, int] = Field(description="Items per dataset (`(none)` when unset).")
    tombstones: int = Field(description="Removed items not yet compacted away.")
    unsaved_changes: int = Field(description="Changes journalled since the last snapshot.")
    memory_bytes: int = Field(description="Memory held by the searchable codes.")
    codebook_fingerprint: str
    device: str
    model_card: dict[str, Any]
