"""Slide and case queries in the service: a whole slide, a patient's slides or an uploaded set of
vectors asks for the archive's most similar slides or cases (`indexer.index.slide_archive`).

The engine (`service.engine.SearchEngine.search_slides`) runs a `SlideSetQuery` on a worker at
its cost (`SlideQueries.cost`): each of the query's items (at most the mosaic bound) is one item
search, like a region query's tiles. Refusals name what was wrong: an unknown slide or group is a
404, a slide without searchable items or a vector set that does not fit the index a 422.

An uploaded vector set (``.npy``, rows x dim) holds the vectors the archive's items were indexed
from: the model's descriptors for an image archive, or for a feature archive the producing
model's features, which the index's own `FeatureEncoder` encodes first (as search by vector).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from indexer.index.errors import IndexInputError
from indexer.index.pq import FloatArray
from indexer.index.query_vectors import QueryVectorError, vectors_from_npy
from indexer.index.records import ItemRecord
from indexer.index.slide_archive import (
    DEFAULT_AGGREGATION,
    SearchableIndex,
    SlideAnswer,
    SlideArchiveCache,
    SlideSearchRequest,
    search_slides,
)
from indexer.index.slide_search import (
    DEFAULT_MOSAIC,
    Aggregation,
    EmptySlideError,
    GroupBy,
    UnknownGroupError,
    UnknownSlideError,
)
from model.feature_encoder import FeatureEncoder
from service.errors import ErrorCode, ServiceError

# Rows an uploaded vector set may hold: a slide of 100,000 tiles; the mosaic bounds what is
# searched (`select_mosaic` reduces 10,000 rows in well under 100 ms).
MAX_SLIDE_VECTORS: Final = 100_000
# Work units (service.engine): one item search of the query's mosaic, about a tenth of a CNN
# forward, as one row of a vector query; and the mosaic's k-means over an uploaded set.
ITEM_SEARCH_COST: Final = 0.05
MOSAIC_COST_PER_MB: Final = 1.0


@dataclass(frozen=True, slots=True)
class SlideSetQuery:
    """A slide (``slide_id``), a case (``group``) or an uploaded vector set (``vectors``, the bytes
    of an ``.npy``) as the query; ``include_own_group`` keeps the query's patient in the answer."""

    slide_id: str | None = None
    group: str | None = None
    vectors: bytes | None = None
    aggregation: Aggregation = DEFAULT_AGGREGATION
    group_by: GroupBy = "slide"
    exclude_group: str | None = None
    include_own_group: bool = False
    mosaic: int = DEFAULT_MOSAIC

    @property
    def kind(self) -> str:
        if self.slide_id is not None:
            return "slide"
        return "group" if self.group is not None else "vectors"


@dataclass(frozen=True, slots=True)
class RankedEvidence:
    query_item: int
    score: float
    record: ItemRecord


@dataclass(frozen=True, slots=True)
class RankedSlideOrCase:
    rank: int
    target: str
    group: str
    score: float
    evidence: list[RankedEvidence]


@dataclass(frozen=True, slots=True)
class SlideOutcome:
    """A slide query's ranked slides or cases, each with its evidence records, and its timings."""

    query: SlideSetQuery
    query_items: int
    mosaic_items: int
    excluded_group: str | None
    results: list[RankedSlideOrCase]
    catalog_ms: float
    search_ms: float


class SlideQueries:
    """The slides of the engine's index (rebuilt when it changes) and the queries over them."""

    def __init__(
        self,
        index: SearchableIndex,
        encoder: FeatureEncoder | None = None,
        registered: Callable[[str], bool] = lambda slide_id: False,
    ) -> None:
        """``encoder``: a feature index's own `FeatureEncoder` (uploaded rows are features),
        None for an image index (uploaded rows are descriptors). ``registered`` says whether a
        slide id is a whole-slide image the indexer opened: one without searchable items (all
        glass, or every item removed) is then a 422, not a 404."""
        self.index = index
        self.encoder = encoder
        self.registered = registered
        self.cache = SlideArchiveCache(index)

    def cost(self, query: SlideSetQuery) -> float:
        upload = 0.0 if query.vectors is None else len(query.vectors) / 1e6 * MOSAIC_COST_PER_MB
        return upload + ITEM_SEARCH_COST * query.mosaic

    def run(self, query: SlideSetQuery, k: int) -> SlideOutcome:
        """Rank the archive's slides or cases (blocking: call through the engine's offload)."""
        start = time.perf_counter()
        try:
            slides = self.cache.current()
        except IndexInputError as error:
            # Shards in other processes (Ray Serve) do not list their items here.
            raise ServiceError(422, ErrorCode.INVALID_REQUEST, str(error)) from error
        catalog_ms = _elapsed_ms(start)
        start = time.perf_counter()
        try:
            answer = search_slides(slides, self.index, self._request(query), k)
        except UnknownSlideError as error:
            if self.registered(error.slide_id):
                raise ServiceError(
                    422,
                    ErrorCode.EMPTY_SLIDE,
                    f"slide {error.slide_id!r} has no searchable items (no tile with tissue "
                    "is indexed)",
                ) from error
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        except UnknownGroupError as error:
            raise ServiceError(404, ErrorCode.NOT_FOUND, str(error)) from error
        except EmptySlideError as error:
            raise ServiceError(422, ErrorCode.EMPTY_SLIDE, str(error)) from error
        except IndexInputError as error:
            raise ServiceError(422, ErrorCode.INVALID_REQUEST, f"slide_vectors: {error}") from error
        results = self._with_records(answer)
        return SlideOutcome(
            query,
            answer.query_items,
            answer.mosaic_items,
            answer.excluded_group,
            results,
            catalog_ms,
            _elapsed_ms(start),
        )

    def _request(self, query: SlideSetQuery) -> SlideSearchRequest:
        exclude = "" if query.include_own_group else query.exclude_group
        return SlideSearchRequest(
            slide_id=query.slide_id,
            group=query.group,
            vectors=None if query.vectors is None else self.set_descriptors(query.vectors),
            aggregation=query.aggregation,
            group_by=query.group_by,
            exclude_group=exclude,
            mosaic=query.mosaic,
        )

    def set_descriptors(self, data: bytes) -> FloatArray:
        """An uploaded vector set as descriptors the index searches (module doc): 422 when it
        does not fit, naming the rule and the dimension expected."""
        encoder = self.encoder
        dim = encoder.input_dim if encoder is not None else int(self.index.descriptor_dim)
        try:
            rows = vectors_from_npy(data, dim, MAX_SLIDE_VECTORS)
        except QueryVectorError as error:
            raise ServiceError(
                422, ErrorCode.INVALID_REQUEST, f"slide_vectors ({error.reason}): {error}"
            ) from error
        return rows if encoder is None else encoder.descriptors(rows)

    def _with_records(self, answer: SlideAnswer) -> list[RankedSlideOrCase]:
        results = []
        for rank, target in enumerate(answer.ranked, start=1):
            evidence = []
            for item in target.evidence:
                record = self.index.get(item.item_id)
                # One removed between the search and this read is left out.
                if record is not None:
                    evidence.append(RankedEvidence(item.query_item, item.score, record))
            results.append(
                RankedSlideOrCase(rank, target.target, target.group, target.score, evidence)
            )
        return results


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
