"""The SPQ network: backbone -> combined global descriptor -> projection -> product quantiser."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.backbones import build_backbone
from model.card import ModelCard
from model.pooling import CombinedGlobalDescriptor
from model.quantizer import ProductQuantizer, split_subvectors


class SPQModel(nn.Module):
    """Images (N, 3, S, S), normalised as the card says, to descriptors and PQ codes.

    Views: ``encode`` (continuous query descriptor), ``quantize`` (soft, for the loss),
    ``assign_codes`` (hard, for the archive), ``codebooks``, ``decode``, ``codes_from_descriptors``.
    """

    def __init__(self, card: ModelCard, backbone_weights: Path | str | None = None) -> None:
        super().__init__()
        self.card = card
        self.trunk, stage_channels = build_backbone(
            card.backbone, card.small_input_stem, backbone_weights, card.stages
        )
        branch_dim = max(1, card.hidden_dim // (len(card.pooling) * len(card.stages)))
        self.global_descriptor = CombinedGlobalDescriptor(stage_channels, card.pooling, branch_dim)
        self.projection = nn.Sequential(
            nn.Linear(self.global_descriptor.output_dim, card.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(card.hidden_dim, card.descriptor_dim),
        )
        self.quantizer = ProductQuantizer(
            card.num_codebooks,
            card.codebook_size,
            card.codeword_dim,
            card.soft_quantization_scale,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, M*d) float32, each of the M sub-vectors of unit length."""
        raw = self.projection(self.global_descriptor(self.trunk(images)))
        # Normalised in float32 even when the network ran in bfloat16 (mixed-precision training),
        # where the sub-vectors' unit length and the soft assignment need the precision.
        return split_subvectors(raw.float(), self.card.num_codebooks).reshape(images.shape[0], -1)

    def quantize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, M*d) soft-quantised descriptor (differentiable)."""
        return self.quantizer.soft_quantize(self.encode(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training view: (descriptor, soft-quantised descriptor), both (N, M*d)."""
        descriptors = self.encode(images)
        return descriptors, self.quantizer.soft_quantize(descriptors)

    def assign_codes(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, M) int64 hard codes in [0, K)."""
        return self.codes_from_descriptors(self.encode(images))

    def codes_from_descriptors(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(N, M*d) descriptors (from ``encode``) -> (N, M) int64 hard codes in [0, K)."""
        return self.quantizer.assign(descriptors)

    def codebooks(self) -> torch.Tensor:
        """(M, K, d) float32 unit-length codewords."""
        return self.quantizer.codebooks()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, M) codes -> (N, M*d) the codewords they select."""
        return self.quantizer.decode(codes)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops_per_image(model: SPQModel) -> int:
    """FLOPs of one ``encode`` at the card's input size (multiply-add counted as 2)."""
    size = model.card.input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def build_model(card: ModelCard, backbone_weights: Path | str | None = None) -> SPQModel:
    """Build an SPQ model; its card gets the parameter count and FLOPs filled in.

    ``backbone_weights``: a local state-dict file, ``"torchvision"`` for torchvision's ImageNet
    weights (needs the internet once), or None for random initialisation.
    """
    model = SPQModel(card, backbone_weights)
    model.card = card.model_copy(
        update={
            "parameter_count": count_parameters(model),
            "flops_per_image": count_flops_per_image(model),
        }
    )
    return model
