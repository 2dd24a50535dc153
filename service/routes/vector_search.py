"""POST /search by feature vectors: the JSON form field ``vector`` (one query, answered as any
search is) and the file field ``vectors`` (an ``.npy`` of one or more rows, answered per row).

The fields are checked by `indexer.index.query_vectors` against the index's feature dimension
and the row limit (HISTOSEARCH_MAX_QUERY_VECTORS); the engine encodes and searches them
(`service.vectors`). Results of a feature archive carry no thumbnail (`thumbnail_note`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from fastapi import Response, UploadFile

from indexer.index.query_vectors import QueryVectorError, vector_from_json, vectors_from_npy
from indexer.index.slides import RankedHit
from indexer.index.store import SearchFilters
from service.engine import SearchEngine
from service.errors import ErrorCode, ServiceError
from service.routes.images import item_fields
from service.routes.uploads import read_upload
from service.schemas import (
    QueryVector,
    RowResults,
    SearchHit,
    SearchResponse,
    Timings,
    VectorSearchResponse,
)
from service.settings import Settings
from service.vectors import FeatureKind, VectorOutcome, VectorQuery, vector_error, vector_refused

T = TypeVar("T")

VECTOR_DESCRIPTION = (
    "Search a feature archive with one feature vector: a JSON array of as many numbers as the "
    "index's feature dimension (GET /ready: feature_dim). Sent alone (no image, item_id or region)."
)
VECTORS_DESCRIPTION = (
    "Search a feature archive with the rows of an .npy (one vector, or rows x feature_dim, "
    "float32; at most HISTOSEARCH_MAX_QUERY_VECTORS rows): answered per row (`queries`)."
)


async def search_by_vectors(
    engine: SearchEngine,
    settings: Settings,
    client: str,
    k: int,
    filters: SearchFilters | None,
    given: tuple[str | None, UploadFile | None],
    others: Sequence[str],
) -> Response:
    """The answer to a search by ``vector`` or ``vectors`` (``given``); ``others`` names the
    other query fields sent with it, which are refused."""
    vector, vectors = given
    if vector is not None and vectors is not None:
        raise ServiceError(
            422, ErrorCode.INVALID_REQUEST, "vector and vectors: send one of them, not both"
        )
    field = "vector" if vector is not None else "vectors"
    if others:
        raise ServiceError(
            422,
            ErrorCode.INVALID_REQUEST,
            f"{field}: a search by vector is sent alone, without {', '.join(others)}",
        )
    kind = engine.features
    if kind is None:
        raise vector_refused()
    if vector is not None:
        rows = _checked(lambda: vector_from_json(vector, kind.dim), field)
        one = await engine.search(
            VectorQuery(rows), k, filters, client=client, render=lambda out: _single(k, kind, out)
        )
        return Response(one, media_type="application/json")
    assert vectors is not None
    data = (await read_upload(vectors, settings.max_upload_bytes)).data
    limit = settings.max_query_vectors
    rows = await engine.offload(
        lambda: _checked(lambda: vectors_from_npy(data, kind.dim, limit), field), client=client
    )
    body = await engine.search(
        VectorQuery(rows), k, filters, client=client, render=lambda out: _per_row(k, kind, out)
    )
    return Response(body, media_type="application/json")


def _checked(parse: Callable[[], T], field: str) -> T:
    try:
        return parse()
    except QueryVectorError as error:
        raise vector_error(error, field) from error


def feature_hit(hit: RankedHit, exact_copy_id: int | None = None) -> SearchHit:
    """A hit of a feature archive: slide, row, label, group and score, and no thumbnail."""
    return SearchHit(
        **item_fields(hit.record, pixels=False),
        score=hit.score,
        rank=hit.rank,
        exact_copy=hit.record.id == exact_copy_id,
    )


def query_vector(kind: FeatureKind, item_id: int | None = None) -> QueryVector:
    return QueryVector(dim=kind.dim, feature_model=kind.feature_model, item_id=item_id)


def timings(embed_ms: float, search_ms: float, decode_ms: float = 0.0) -> Timings:
    return Timings(
        decode_ms=round(decode_ms, 3),
        embed_ms=round(embed_ms, 3),
        search_ms=round(search_ms, 3),
        total_ms=round(decode_ms + embed_ms + search_ms, 3),
    )


def _single(k: int, kind: FeatureKind, outcome: VectorOutcome) -> bytes:
    return (
        SearchResponse(
            k=k,
            results=[feature_hit(hit) for hit in outcome.rows[0][:k]],
            query=None,
            query_vector=query_vector(kind),
            timings=timings(outcome.encode_ms, outcome.search_ms),
        )
        .model_dump_json()
        .encode()
    )


def _per_row(k: int, kind: FeatureKind, outcome: VectorOutcome) -> bytes:
    return (
        VectorSearchResponse(
            k=k,
            rows=len(outcome.rows),
            queries=[
                RowResults(row=row, results=[feature_hit(hit) for hit in hits[:k]])
                for row, hits in enumerate(outcome.rows)
            ],
            query_vector=query_vector(kind),
            timings=timings(outcome.encode_ms, outcome.search_ms),
        )
        .model_dump_json()
        .encode()
    )
