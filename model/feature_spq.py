"""SPQ on feature vectors a backbone already produced: centring -> head -> product quantiser.

The backbone is whoever made the vectors (its name is on the card, ``feature_model``); what
learns is a head that maps a centred input vector to the M unit sub-vectors of the descriptor,
and the codebooks. Both models share the views of `model.quantised_encoder.QuantisedEncoder`
(``quantize``, ``assign_codes``, ``codes_from_descriptors``, ``codebooks``, ``decode``), with
(N, input_dim) feature rows in place of images, so an index treats both alike: same cosine ADC,
same codebooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.card import ModelCard
from model.checkpoint import (
    CheckpointMismatchError,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from model.quantised_encoder import QuantisedEncoder, product_quantizer, unit_descriptor


class FeatureSPQModel(QuantisedEncoder):
    """(N, input_dim) feature vectors to descriptors and PQ codes; the card's ``input_dim`` > 0.

    ``feature_mean`` (a buffer, saved with the weights) is the training vectors' mean: a
    backbone's raw features share a large common direction (the dataset README asks for
    centring before cosine), which would otherwise dominate every sub-space.
    The head is linear when the card's ``feature_head_hidden`` is 0, else one hidden ReLU layer.
    """

    feature_mean: torch.Tensor

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        if card.input_dim <= 0:
            raise ValueError("a feature model's card needs input_dim > 0 (the vectors' length)")
        self.card = card
        self.register_buffer("feature_mean", torch.zeros(card.input_dim))
        self.head: nn.Module
        if card.feature_head_hidden:
            self.head = nn.Sequential(
                nn.Linear(card.input_dim, card.feature_head_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(card.feature_head_hidden, card.descriptor_dim),
            )
        else:
            self.head = nn.Linear(card.input_dim, card.descriptor_dim, bias=False)
        self.quantizer = product_quantizer(card)

    def centred(self, features: torch.Tensor) -> torch.Tensor:
        """(N, input_dim) -> centred unit rows (the float vectors' cosine geometry)."""
        if features.ndim != 2 or features.shape[1] != self.card.input_dim:
            raise ValueError(
                f"features must be (N, {self.card.input_dim}), got {tuple(features.shape)}"
            )
        return F.normalize(features.float() - self.feature_mean, dim=-1)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(N, input_dim) -> (N, M*d) float32, each of the M sub-vectors of unit length."""
        return unit_descriptor(self.head(self.centred(features)), self.card.num_codebooks)


def save_feature_checkpoint(
    model: FeatureSPQModel, path: Path, extra: dict[str, Any] | None = None
) -> None:
    """The weights (centring mean included) with the card, in the checkpoint format of
    `model.checkpoint` (tensors and plain data, written atomically)."""
    save_checkpoint(model, path, extra)


def load_feature_checkpoint(path: Path, map_location: str = "cpu") -> FeatureSPQModel:
    """Rebuild a feature model in eval mode; refuses a pixel model's checkpoint or weights that
    do not fit the card (`CheckpointMismatchError`)."""
    payload = read_checkpoint(Path(path), map_location)
    card = ModelCard.model_validate(payload["card"])
    if card.input_dim <= 0:
        raise CheckpointMismatchError(f"{path} holds an image model, not a feature model")
    model = FeatureSPQModel(card)
    load_weights(model, payload["state_dict"], path)
    return model.to(map_location).eval()
