"""The optional second stage of an index: a finer code per item that re-ranks the compact shortlist.

The compact SPQ codes (held in RAM) rank every eligible item by ADC; the best
``shortlist_factor x k`` of them are re-ranked by the inner product of the float query with the
item's finer code, and the best k of those are the answer. The finer code is 8-bit scalar
quantisation (FAISS ``ScalarQuantizer``, ``QT_8bit``: one byte per dimension, a trained range per
dimension) of the unit vector the item was indexed from: for a feature archive the foundation
model's row, centred by the feature model's mean and scaled to unit length (the float baseline's
cosine geometry). The codes live on disk (``fine.<gen>.npy``, memory-mapped) and in SQLite; they
cost disk, not RAM.

One contract: the index (`indexer.index.store`) and the evaluation (`indexer.evaluate.features`)
re-rank with `rerank_shortlists` and the same `FineQuantiser`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
FineCodeArray = npt.NDArray[np.uint8]

SQ8: Literal["sq8"] = "sq8"
SECOND_STAGE_KINDS = (SQ8,)
# 10 x k: the bound on the re-ranked shortlist. A longer one buys recall of the float
# top 10 (docs/feature-archives.md has the measured figures per factor).
DEFAULT_SHORTLIST_FACTOR = 10
# The trained range is widened by this share on each side, so that rows after the first batch
# (which trains it) are rarely clipped.
_RANGE_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class SecondStageSettings:
    """What a user turns on when creating an index: the fine code's kind and the shortlist."""

    kind: Literal["sq8"] = SQ8
    # None: the default for a new index, whatever an existing one recorded.
    shortlist_factor: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SECOND_STAGE_KINDS:
            raise ValueError(
                f"second stage {self.kind!r} is not one of {', '.join(SECOND_STAGE_KINDS)}"
            )
        if self.shortlist_factor is not None and self.shortlist_factor < 1:
            raise ValueError(f"shortlist factor must be at least 1, got {self.shortlist_factor}")

    @property
    def factor(self) -> int:
        return DEFAULT_SHORTLIST_FACTOR if self.shortlist_factor is None else self.shortlist_factor


class FineQuantiser:
    """8-bit scalar quantisation with a trained (min, width) per dimension."""

    def __init__(self, dim: int, trained: FloatArray) -> None:
        if trained.shape != (2 * dim,):
            raise ValueError(f"a trained range of {dim} dimensions has {2 * dim} floats")
        self.dim = dim
        self.trained = np.ascontiguousarray(trained, dtype=np.float32)
        self._quantiser = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
        faiss.copy_array_to_vector(self.trained, self._quantiser.trained)

    @classmethod
    def train(cls, vectors: npt.NDArray[np.floating]) -> FineQuantiser:
        """Fit the range of each dimension on ``vectors`` (N, D), widened by a small margin."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or len(rows) == 0:
            raise ValueError(f"a fine quantiser trains on (N, D) rows, got {rows.shape}")
        quantiser = faiss.ScalarQuantizer(rows.shape[1], faiss.ScalarQuantizer.QT_8bit)
        quantiser.rangestat = faiss.ScalarQuantizer.RS_minmax
        quantiser.rangestat_arg = _RANGE_MARGIN
        quantiser.train(rows)
        return cls(rows.shape[1], faiss.vector_to_array(quantiser.trained).astype(np.float32))

    @classmethod
    def from_bytes(cls, dim: int, data: bytes) -> FineQuantiser:
        return cls(dim, np.frombuffer(data, dtype=np.float32).copy())

    def to_bytes(self) -> bytes:
        return self.trained.tobytes()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the trained range: the manifest records it."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def code_bytes(self) -> int:
        return self.dim

    def encode(self, vectors: npt.NDArray[np.floating]) -> FineCodeArray:
        codes: FineCodeArray = self._quantiser.compute_codes(
            np.ascontiguousarray(vectors, dtype=np.float32)
        )
        return codes

    def decode(self, codes: FineCodeArray) -> FloatArray:
        if len(codes) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors: FloatArray = self._quantiser.decode(np.ascontiguousarray(codes, dtype=np.uint8))
        return vectors


def unit_rows(vectors: npt.NDArray[np.floating]) -> FloatArray:
    """Rows scaled to unit length (a zero row stays zero): fine vectors and fine queries."""
    rows = np.array(vectors, dtype=np.float32, copy=True)
    faiss.normalize_L2(rows)
    return rows


def rerank_shortlists(
    fine_queries: FloatArray,
    shortlists: IdArray,
    codes_of: Callable[[IdArray], FineCodeArray],
    quantiser: FineQuantiser,
    k: int,
) -> tuple[FloatArray, IdArray]:
    """The best ``k`` of each query's shortlist by inner product with the decoded fine codes.

    ``shortlists`` (Q, S) holds candidate ids, -1 where a query has fewer; ``codes_of`` gives the
    fine codes of ids. Rows are best first, ties in id order, padded with -inf and -1: exactly a
    brute-force ranking over the fine codes of the shortlist.
    """
    scores = np.full((len(shortlists), k), -np.inf, dtype=np.float32)
    ids = np.full((len(shortlists), k), -1, dtype=np.int64)
    for row, (query, candidates) in enumerate(zip(fine_queries, shortlists, strict=True)):
        held = np.sort(candidates[candidates >= 0])
        if len(held) == 0:
            continue
        candidate_scores = quantiser.decode(codes_of(held)) @ query
        best = np.argsort(-candidate_scores, kind="stable")[:k]
        scores[row, : len(best)] = candidate_scores[best]
        ids[row, : len(best)] = held[best]
    return scores, ids
