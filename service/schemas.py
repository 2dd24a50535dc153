"""The service's vocabulary: every request and response body, typed, so OpenAPI documents them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

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
    # A query that does not fit the index's kind (pixels to a feature index, or the reverse), and
    # query vectors that break a rule of indexer/index/query_vectors.py (one code per rule).
    INDEX_KIND_MISMATCH = "index_kind_mismatch"
    VECTOR_FORMAT = "vector_format"
    VECTOR_DTYPE = "vector_dtype"
    VECTOR_SHAPE = "vector_shape"
    VECTOR_LENGTH = "vector_length"
    VECTOR_NOT_FINITE = "vector_not_finite"
    TOO_MANY_VECTORS = "too_many_vectors"
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


class FeatureItem(_Schema):
    """Where a feature archive's item came from: a row of its slide's feature file."""

    slide_id: str | None = Field(default=None, description="The slide the vector describes.")
    row: int | None = Field(default=None, description="Its row in the feature file (from 0).")


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
    thumbnail_url: str | None = Field(
        description="The item's JPEG thumbnail; null for an item of a feature archive, which "
        "holds no pixels (`thumbnail_note` then says so)."
    )
    thumbnail_note: str | None = Field(
        default=None, description="Why there is no thumbnail, where there is none."
    )
    feature: FeatureItem | None = Field(
        default=None,
        description="For an item of a feature archive (vectors, no pixels): its slide and row.",
    )
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


class QueryVector(_Schema):
    """The query of a search in a feature archive: a vector sent, or an item's stored code."""

    dim: int = Field(description="The feature dimension the index holds.")
    feature_model: str = Field(description="The model whose features the index holds.")
    item_id: int | None = Field(
        default=None, description="The item whose stored code was the query (item_id searches)."
    )


class SearchResponse(_Schema):
    k: int
    results: list[SearchHit]
    query: QueryImage | None = Field(
        description="The uploaded image; null where no image was the query (feature archives)."
    )
    timings: Timings
    query_vector: QueryVector | None = Field(
        default=None, description="Set for a search in a feature archive (no query image)."
    )
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


class RowResults(_Schema):
    """The answer to one row of a `vectors` search."""

    row: int = Field(ge=0, description="The row of the uploaded .npy (from 0).")
    results: list[SearchHit]


class VectorSearchResponse(_Schema):
    """The answer to a search by `vectors` (an .npy of one or more rows): one list per row."""

    k: int
    rows: int = Field(ge=1, description="Rows searched (at most HISTOSEARCH_MAX_QUERY_VECTORS).")
    queries: list[RowResults] = Field(description="One answer per row, in row order.")
    query_vector: QueryVector
    timings: Timings = Field(
        description="For all rows together: embed_ms is the head's encoding, decode_ms 0."
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


IndexKind = Literal["images", "features"]


class ReadyResponse(_Schema):
    status: str = "ready"
    index_kind: IndexKind | None = Field(
        default=None,
        description="`images` (searched with images) or `features` (a feature archive, searched "
        "with vectors of `feature_dim` numbers); absent, as `items`, where reads need the key.",
    )
    feature_dim: int | None = Field(default=None, description="Length of a query vector.")
    items: int | None = Field(
        default=None,
        description="Items in the archive; absent where reads need the API key "
        "(HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH), since /ready is open to everyone.",
    )


class StageBytes(_Schema):
    """Bytes one item takes in one stage of search, averaged over the items held."""

    stage: str = Field(
        description="`codes`: the PQ codes every search scans; `fine`: the second stage's 8-bit "
        "codes that re-rank the shortlist, where the index has one."
    )
    ram: float = Field(
        description="Process memory per item (the searchable table; for `fine`, only the codes "
        "added since the last snapshot: the snapshot is memory-mapped)."
    )
    disk: float = Field(description="Disk per item: the sum of `disk_parts`.")
    disk_parts: dict[str, float] = Field(
        description="Disk per item by file: `codes` and `ids` (the FAISS snapshot), `metadata` "
        "(SQLite: records, thumbnails and the codes again, the source of truth); for `fine`, "
        "`fine_codes` and `fine_ids` (its memory-mapped snapshot)."
    )


class BytesPerItem(_Schema):
    """What one item costs, in RAM and on disk; 0 for an empty index."""

    ram: float = Field(description="Process memory per item, all stages.")
    disk: float = Field(description="Disk per item, all stages.")
    stages: list[StageBytes] = Field(
        description="Per stage, in search order: `codes` first, then a re-ranking stage where "
        "the index has one."
    )
    fixed_disk_bytes: int = Field(
        description="Disk that does not grow with items: model, card, manifests."
    )


class StatsResponse(_Schema):
    items: int
    index_kind: IndexKind = Field(description="`images`, or `features` for a feature archive.")
    feature_dim: int | None = Field(
        default=None, description="Length of a query vector (feature archives)."
    )
    feature_model: str | None = Field(
        default=None, description="The model whose features a feature archive holds."
    )
    bytes_per_item: BytesPerItem
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
