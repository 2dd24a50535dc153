"""Feature indexes in the service: search by vector, by an item's stored code, and what they refuse.

A feature index (its card's ``input_dim`` > 0, `model.feature_spq.FeatureSPQModel`) holds the codes
of vectors a foundation model produced elsewhere: it has no pixels. It is searched with

- a `VectorQuery`: rows of the producing model's features, checked by
  `indexer.index.query_vectors` and encoded by the index's own feature model (its head, through
  `model.feature_encoder.FeatureEncoder`, as the indexer encodes the archive's rows), each row
  answered on its own; the descriptors are never quantised (asymmetric distance);
- an item's stored code (`stored_code_descriptor`): the codewords its code selects are the query,
  so nothing is re-read from the archive (there are no source files to re-read).

An image query or an image upload to a feature index, and a vector query to an image index, are
refused with a 422 (`ErrorCode.INDEX_KIND_MISMATCH`) that says what the index holds and how to
query it; a vector that does not fit is a 422 whose code names the broken rule (`vector_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from indexer.index.pq import CodeArray
from indexer.index.protocol import Index
from indexer.index.query_vectors import QueryVectorError, Reason
from indexer.index.records import ItemRecord
from indexer.index.shards import ShardedIndex
from indexer.index.slides import RankedHit
from indexer.index.store import ArchiveIndex
from model.card import ModelCard
from model.feature_encoder import FeatureEncoder
from service.errors import ErrorCode, ServiceError

# Work units of the fair scheduler (service.engine: one unit is about 17.5 ms of CPU). One row of
# 192 numbers against 20,000 items took 2.0 ms in the engine at k = 10 (0.9 ms the head, 1.1 ms the
# scan and the records), measured on the shared 2-core test machine: about a tenth of a unit.
VECTOR_ROW_COST = 0.1

NO_PIXELS_NOTE = "feature archive: no pixels to show"

_REASON_CODES: dict[Reason, ErrorCode] = {
    "format": ErrorCode.VECTOR_FORMAT,
    "dtype": ErrorCode.VECTOR_DTYPE,
    "shape": ErrorCode.VECTOR_SHAPE,
    "length": ErrorCode.VECTOR_LENGTH,
    "non_finite": ErrorCode.VECTOR_NOT_FINITE,
    "too_many": ErrorCode.TOO_MANY_VECTORS,
}


@dataclass(frozen=True, slots=True)
class VectorQuery:
    """Search with (Q, input_dim) float32 feature rows, already checked: one answer per row."""

    vectors: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VectorOutcome:
    """A vector query's ranked hits, one list per row in row order, and its timings."""

    rows: list[list[RankedHit]]
    encode_ms: float
    search_ms: float


@dataclass(frozen=True, slots=True)
class FeatureKind:
    """What a feature index holds: vectors of ``dim`` numbers from the model ``feature_model``."""

    dim: int
    feature_model: str

    @classmethod
    def of(cls, card: ModelCard) -> FeatureKind | None:
        """The kind of an index with this card; None for an image index."""
        if card.input_dim <= 0:
            return None
        return cls(card.input_dim, card.feature_model or "an unnamed feature model")

    def holds(self) -> str:
        return f"this index holds feature vectors of dimension {self.dim} from {self.feature_model}"

    def how_to_query(self) -> str:
        return (
            f"search it with the form field vector (a JSON array of {self.dim} numbers), the "
            f"file field vectors (an .npy of rows x {self.dim}, answered per row) or item_id"
        )


def image_refused(kind: FeatureKind, what: str = "an image query") -> ServiceError:
    """The 422 for pixels sent to a feature index."""
    return ServiceError(
        422,
        ErrorCode.INDEX_KIND_MISMATCH,
        f"{what} cannot be searched here: {kind.holds()}, no pixels; {kind.how_to_query()}",
    )


def vector_refused() -> ServiceError:
    """The 422 for a vector sent to an image index."""
    return ServiceError(
        422,
        ErrorCode.INDEX_KIND_MISMATCH,
        "vector and vectors: this index holds images, encoded by its own CNN, not feature "
        "vectors; search it with an image upload (image), item_id or a slide region",
    )


def vector_error(error: QueryVectorError, field: str) -> ServiceError:
    """A refused query vector as a 422 whose code names the rule it broke."""
    return ServiceError(422, _REASON_CODES[error.reason], f"{field}: {error}")


def stored_code_descriptor(
    encoder: FeatureEncoder, index: Index, item_id: int
) -> npt.NDArray[np.float32]:
    """(1, M*d): the codewords an item's stored code selects, the query of "more like this" in
    a feature index. The caller has checked that the item exists."""
    codes = codes_holder(index, item_id).codes_of([item_id])
    with torch.inference_mode():
        decoded = encoder.model.decode(torch.from_numpy(codes.astype(np.int64)).to(encoder.device))
    return np.ascontiguousarray(decoded.cpu().numpy(), dtype=np.float32)


def stored_fine_query(index: Index, item_id: int) -> npt.NDArray[np.float32] | None:
    """(1, D): an item's decoded second-stage code, the fine query of "more like this" in an
    index with a second stage (None without one). The caller has checked that the item exists."""
    if index.second_stage is None:
        return None
    holder = codes_holder(index, item_id)
    if not isinstance(holder, ArchiveIndex):
        raise ServiceError(
            422,
            ErrorCode.INDEX_KIND_MISMATCH,
            f"item_id {item_id}: its second-stage code cannot be read in this deployment (shards "
            "in other processes); search with its feature vector instead",
        )
    return holder.fine_vectors_of([item_id])


@runtime_checkable
class CodeHolder(Protocol):
    """What holds items' codes: an index, a shard opened here, or a client of a shard on Ray
    (`service.ray_serve.ShardClient`)."""

    def codes_of(self, item_ids: npt.ArrayLike) -> CodeArray: ...


def codes_holder(index: Index, item_id: int) -> CodeHolder:
    """The index (or the shard of a sharded one) whose table holds ``item_id``'s code."""
    if isinstance(index, ArchiveIndex):
        return index
    if isinstance(index, ShardedIndex):
        number = index.shard_holding(item_id)
        shard = None if number is None else index.shards[number]
        if isinstance(shard, CodeHolder):
            return shard
    raise ServiceError(
        422,
        ErrorCode.INDEX_KIND_MISMATCH,
        f"item_id {item_id}: its stored code cannot be read in this deployment (shards in other "
        "processes); search with its feature vector instead",
    )


def feature_fields(record: ItemRecord) -> tuple[str | None, int | None]:
    """What a feature item says about itself: its slide id and its row in its feature file."""
    extra = record.extra or {}
    slide_id, row = extra.get("slide_id"), extra.get("row")
    return (
        slide_id if isinstance(slide_id, str) else None,
        row if isinstance(row, int) and not isinstance(row, bool) else None,
    )
