"""The shared views: every model's codes, decoding and soft view follow from its ``encode``."""

from __future__ import annotations

import torch
from torch import nn

from model.card import ModelCard
from model.quantised_encoder import QuantisedEncoder, product_quantizer, unit_descriptor


class LinearEncoder(QuantisedEncoder):
    """The smallest model: one linear layer before the quantiser."""

    def __init__(self, card: ModelCard, input_dim: int) -> None:
        super().__init__()
        self.card = card
        self.layer = nn.Linear(input_dim, card.descriptor_dim)
        self.quantizer = product_quantizer(card)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        return unit_descriptor(self.layer(inputs), self.card.num_codebooks)


def small_card(scale: float = 5.0) -> ModelCard:
    return ModelCard.model_validate(
        {
            "backbone": "features:test",
            "num_codebooks": 3,
            "codebook_size": 8,
            "codeword_dim": 4,
            "input_dim": 6,
            "soft_quantization_scale": scale,
        }
    )


def test_unit_descriptor_gives_float32_rows_of_unit_sub_vectors() -> None:
    raw = torch.randn(5, 12, dtype=torch.bfloat16)
    descriptor = unit_descriptor(raw, 3)
    assert descriptor.dtype == torch.float32 and descriptor.shape == (5, 12)
    norms = descriptor.reshape(5, 3, 4).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_hard_codes_pick_each_sub_vectors_most_similar_codeword() -> None:
    torch.manual_seed(0)
    model = LinearEncoder(small_card(), 6).eval()
    inputs = torch.randn(16, 6)
    codes = model.assign_codes(inputs)
    cosines = torch.einsum(
        "nmd,mkd->nmk", model.encode(inputs).reshape(16, 3, 4), model.codebooks()
    )
    assert torch.equal(codes, cosines.argmax(dim=-1))
    assert torch.equal(model.codes_from_descriptors(model.encode(inputs)), codes)
    picked = model.decode(codes).reshape(16, 3, 4)
    expected = model.codebooks()[torch.arange(3), codes]
    assert torch.allclose(picked, expected)


def test_the_soft_view_approaches_the_hard_codewords_as_the_scale_grows() -> None:
    torch.manual_seed(1)
    inputs = torch.randn(10, 6)
    gaps = []
    for scale in (1.0, 1000.0):
        model = LinearEncoder(small_card(scale), 6).eval()
        torch.manual_seed(2)
        model.layer.reset_parameters()
        with torch.no_grad():
            descriptors, soft = model(inputs)
            assert torch.allclose(descriptors, model.encode(inputs))
            assert torch.allclose(soft, model.quantize(inputs))
            hard = model.decode(model.assign_codes(inputs))
        gaps.append(float((soft - hard).abs().max()))
    assert gaps[1] < 1e-3 < gaps[0]
