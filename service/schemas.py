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


class ErrorCode(StrEnum):
    """Every machine-readable error code the service answers with: one list, documented here."""

    # 400
    EMPTY_FILE = "empty_file"
    CORRUPT_IMAGE = "corrupt_image"
    BAD_REQUEST = "bad_request"
    # 401, 403
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    WRITES_DISABLED = "writes_disabled"
    # 404, 405, 406
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    # 408
    REQUEST_TIMEOUT = "request_timeout"
    # 413
    UPLOAD_TOO_LARGE = "upload_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_FILES = "too_many_files"
    # 415
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # 422
    MULTI_FRAME_IMAGE = "multi_frame_image"
    UNSUPPORTED_PIXEL_FORMAT = "unsupported_pixel_format"
    K_TOO_LARGE = "k_too_large"
    EMPTY_SLIDE = "empty_slide"
    INVALID_TEXT = "invalid_text"
    INVALID_REQUEST = "invalid_request"
    NO_TISSUE = "no_tissue"
    REGION_OUTSIDE_SLIDE = "region_outside_slide"
    REGION_TOO_LARGE = "region_too_large"
    # 429
    TOO_MANY_REQUESTS = "too_many_requests"
    # 500, 503
    INTERNAL_ERROR = "internal_error"
    NOT_READY = "not_ready"
    SERVER_BUSY = "server_busy"
    TOO_MANY_CONNECTIONS = "too_many_connections"


class ErrorResponse(_Schema):
    """Every 4xx and 5xx answer has this shape."""

    code: ErrorCode = Field(description="Stable machine-readable error code, e.g. `corrupt_image`.")
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
    source: str | None = Field(
        default=None,
        description="Where the tile came from within its archive (text only; never a path of "
        "the server's machine: such a source is shown by its file name).",
    )
    tile: TilePosition | None = None
    source_size: ImageSize | None = None
    added_at: datetime | None = None
    thumbnail_url: str
    extra: dict[str, Any] = Field(default_factory=dict)


# --- search ---------------------------------------------------------------------------------------


class SearchHit(ItemMetadata):
    score: float = Field(description="Sum of per-sub-space cosines; higher is closer.")
    rank: int = Field(ge=1)
    exact_copy: bool = Field(
        default=False,
        description="The item has the query file's content hash: the uploaded image itself. "
        "Ranked first, whatever else ties with its score.",
    )


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
    query_tiles: int = Field(
        default=1,
        ge=1,
        description="Query tiles searched: 1 for a tile-sized upload, more for a region query.",
    )
    tissue_tiles: int = Field(
        default=1,
        ge=1,
        description="Tissue tiles in the region; above query_tiles when only an evenly spaced "
        "subset of HISTOSEARCH_MAX_QUERY_TILES was searched.",
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
    items: int | None = Field(
        default=None,
        description="Items in the archive; absent where reads need the API key "
        "(HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH), since /ready is open to everyone.",
    )


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
