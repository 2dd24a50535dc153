"""The one way feature rows become descriptors and codes: the `Embedder` of a feature index.

A feature index stores vectors a foundation model already produced; indexing, search by vector
and evaluation all pass those rows through `FeatureEncoder`, so an indexed row and a query row
meet the same centring, head and codebooks, in eval mode, without gradients, float32 out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from model.embedder import BatchedModel
from model.feature_spq import FeatureSPQModel

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T", bound=np.generic)

# Rows per forward pass. The head is one small matrix product per row (192 -> 64 floats for the
# shared regions), so large batches amortise the per-call overhead: 16384 rows of 1536 floats
# (the widest foundation model) are 100 MB of input.
DEFAULT_FEATURE_BATCH_SIZE = 16384


class FeatureEncoder(BatchedModel[FeatureSPQModel]):
    """A feature model in eval mode on a device: (N, input_dim) rows to descriptors or codes."""

    def __init__(
        self,
        model: FeatureSPQModel,
        device: torch.device,
        batch_size: int = DEFAULT_FEATURE_BATCH_SIZE,
    ) -> None:
        super().__init__(model.to(device).eval(), device, batch_size)

    @property
    def input_dim(self) -> int:
        """The length of the rows this model reads (the foundation model's embedding)."""
        return self.card.input_dim

    def __call__(self, rows: npt.NDArray[np.floating]) -> FloatArray:
        return self.descriptors(rows)

    def descriptors(self, rows: npt.NDArray[np.floating]) -> FloatArray:
        """(N, input_dim) rows -> (N, M*d) float32 descriptors, each sub-vector unit length.

        These are what an index is given (it quantises what it stores) and what a query is.
        """
        return self._batched(rows, self.model.encode, self.dim, np.float32)

    def centred(self, rows: npt.NDArray[np.floating]) -> FloatArray:
        """(N, input_dim) rows -> centred unit rows: the float vectors' cosine geometry, what an
        index's second stage quantises and re-ranks by."""
        return self._batched(rows, self.model.centred, self.input_dim, np.float32)

    def codes(self, rows: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        """(N, input_dim) rows -> (N, M) int64 codes in [0, K), as the index would store them."""
        return self._batched(rows, self.model.assign_codes, self.card.num_codebooks, np.int64)

    def _batched(
        self,
        rows: npt.NDArray[np.floating],
        forward: Callable[[torch.Tensor], torch.Tensor],
        width: int,
        dtype: type[T],
    ) -> npt.NDArray[T]:
        if rows.ndim != 2 or rows.shape[1] != self.input_dim:
            raise ValueError(
                f"feature rows must be (N, {self.input_dim}) for this model of "
                f"{self.card.feature_model or 'feature'} vectors, got {tuple(rows.shape)}"
            )
        out = np.empty((len(rows), width), dtype=dtype)
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(rows[start : start + self.batch_size])
                )
                out[start : start + len(batch)] = forward(batch.to(self.device)).cpu().numpy()
        return out
