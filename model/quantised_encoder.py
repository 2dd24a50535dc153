"""What every histosearch model is to an index: inputs -> unit sub-vector descriptor -> PQ codes.

`model.spq.SPQModel` (images) and `model.feature_spq.FeatureSPQModel` (a backbone's feature
vectors) differ only in how ``encode`` makes the descriptor; the views an index and the loss
use (``quantize``, ``forward``, ``assign_codes``, ``codes_from_descriptors``, ``codebooks``,
``decode``) follow from ``encode`` and the product quantiser, here once, so both kinds of model
give an index the same codes, codebooks and cosine ADC.
"""

from __future__ import annotations

import torch
from torch import nn

from model.card import ModelCard
from model.quantizer import ProductQuantizer, split_subvectors


def product_quantizer(card: ModelCard) -> ProductQuantizer:
    """The card's M codebooks of K codewords of dim d, with its soft-assignment scale."""
    return ProductQuantizer(
        card.num_codebooks,
        card.codebook_size,
        card.codeword_dim,
        card.soft_quantization_scale,
    )


def unit_descriptor(raw: torch.Tensor, num_codebooks: int) -> torch.Tensor:
    """(N, M*d) head output -> (N, M*d) float32 with each of the M sub-vectors of unit length.

    Normalised in float32 even when the network ran in bfloat16 (mixed-precision training),
    where the sub-vectors' unit length and the soft assignment need the precision.
    """
    return split_subvectors(raw.float(), num_codebooks).reshape(raw.shape[0], -1)


class QuantisedEncoder(nn.Module):
    """Base of the models: a subclass sets ``card`` and ``quantizer`` (`product_quantizer`, made
    where its parameters belong in the module order) and defines ``encode``."""

    card: ModelCard
    quantizer: ProductQuantizer

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, ...) inputs -> (N, M*d) float32 descriptor of unit sub-vectors."""
        raise NotImplementedError

    def quantize(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (N, M*d) soft-quantised descriptor (differentiable)."""
        return self.quantizer.soft_quantize(self.encode(inputs))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training view: (descriptor, soft-quantised descriptor), both (N, M*d)."""
        descriptors = self.encode(inputs)
        return descriptors, self.quantizer.soft_quantize(descriptors)

    def assign_codes(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (N, M) int64 hard codes in [0, K)."""
        return self.codes_from_descriptors(self.encode(inputs))

    def codes_from_descriptors(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(N, M*d) descriptors (from ``encode``) -> (N, M) int64 hard codes in [0, K)."""
        return self.quantizer.assign(descriptors)

    def codebooks(self) -> torch.Tensor:
        """(M, K, d) float32 unit-length codewords."""
        return self.quantizer.codebooks()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, M) codes -> (N, M*d) the codewords they select."""
        return self.quantizer.decode(codes)
