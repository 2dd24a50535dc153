"""The one way images become query descriptors: every caller embeds through `Embedder`.

The indexing pipeline, the service, evaluation, training's validation and the benchmarks all use
it, so a descriptor computed offline and one computed for an upload come from the same code: the
same preprocessing (`model.preprocess.preprocess`), the same eval mode, no gradients, float32 out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from model.card import ModelCard
from model.preprocess import normalize, preprocess
from model.spq import SPQModel

FloatArray = npt.NDArray[np.float32]

# Images per forward pass: large enough to amortise the per-call overhead, small enough to bound
# memory on a CPU-only host (32 tiles of 224 px are ~20 MB of input).
DEFAULT_BATCH_SIZE = 32


class _CardedModel(Protocol):
    @property
    def card(self) -> ModelCard: ...


ModelT = TypeVar("ModelT", bound=_CardedModel)


class BatchedModel(Generic[ModelT]):
    """A model on a device that is run in batches of `batch_size` inputs and gives descriptors."""

    def __init__(self, model: ModelT, device: torch.device, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.device = device
        self.batch_size = batch_size

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def dim(self) -> int:
        """The length of the descriptors it gives (M*d)."""
        return self.card.descriptor_dim


class Embedder(BatchedModel[SPQModel]):
    """An SPQ model in eval mode on a device, turning images into (N, M*d) float32 descriptors.

    The descriptors are the continuous ones (`SPQModel.encode`, each sub-vector unit length):
    queries are never quantised; the index quantises what it stores.
    """

    def __init__(
        self, model: SPQModel, device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        super().__init__(model.to(device), device, batch_size)

    def __call__(self, images: Sequence[Image.Image]) -> FloatArray:
        return self.embed(images)

    def embed(self, images: Sequence[Image.Image]) -> FloatArray:
        """Descriptors of decoded RGB images (any size: each is resized to the card's input)."""
        chunks = [
            self._forward(preprocess(list(images[start : start + self.batch_size]), self.card))
            for start in range(0, len(images), self.batch_size)
        ]
        return _stacked(chunks, self.dim)

    def embed_tensors(self, images: torch.Tensor) -> FloatArray:
        """Descriptors of (N, 3, S, S) images in [0, 1] already at the card's input size.

        Training keeps its validation images as such a tensor; normalisation happens here.
        """
        chunks = [
            self._forward(normalize(images[start : start + self.batch_size].float(), self.card))
            for start in range(0, images.shape[0], self.batch_size)
        ]
        return _stacked(chunks, self.dim)

    def _forward(self, batch: torch.Tensor) -> FloatArray:
        # Training validates its model mid-run: embed in eval mode, then give back the mode it had.
        # A model already in eval mode (the service, indexing) is left alone: no per-batch walk
        # over its modules, and concurrent searches never see the mode change.
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.inference_mode():
                descriptors = self.model.encode(batch.to(self.device)).float().cpu().numpy()
        finally:
            if was_training:
                self.model.train()
        return descriptors


def _stacked(chunks: list[FloatArray], dim: int) -> FloatArray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
