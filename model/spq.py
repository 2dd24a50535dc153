"""The SPQ network: backbone -> combined global descriptor -> projection -> product quantiser."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.backbones import ResNetTrunk, load_backbone
from model.card import ModelCard
from model.pooling import CombinedGlobalDescriptor, TokenDescriptor
from model.quantised_encoder import QuantisedEncoder, product_quantizer, unit_descriptor
from model.stain_colour import StainColourBranch
from model.timm_backbones import TimmTrunk, TokenFeatures


class SPQModel(QuantisedEncoder):
    """Images (N, 3, S, S), normalised as the card says, to descriptors and PQ codes.

    ``encode`` gives the continuous query descriptor; the quantised views (``quantize`` soft for
    the loss, ``assign_codes`` hard for the archive, ``codebooks``, ``decode``) come from
    `model.quantised_encoder.QuantisedEncoder`.
    """

    def __init__(self, card: ModelCard, backbone_weights: Path | str | None = None) -> None:
        super().__init__()
        backbone = load_backbone(
            card.backbone, card.small_input_stem, backbone_weights, card.stages
        )
        self.trunk: ResNetTrunk | TimmTrunk = backbone.trunk
        self.card = card.model_copy(update={"embedding_dim": backbone.embedding_dim})
        if backbone_weights is not None:
            self.card = self.card.model_copy(
                update={
                    "backbone_weights": backbone.weights_source,
                    "backbone_weights_sha256": backbone.weights_sha256,
                }
            )
        self.global_descriptor: CombinedGlobalDescriptor | TokenDescriptor
        if backbone.is_token_model:
            assert isinstance(self.trunk, TimmTrunk)
            branch_dim = max(1, card.hidden_dim // (len(card.pooling) + 1))
            self.global_descriptor = TokenDescriptor(
                self.trunk.width,
                card.pooling,
                branch_dim,
                self.trunk.has_class_token,
                standardize=card.backbone_is_frozen,
            )
        else:
            branch_dim = max(1, card.hidden_dim // (len(card.pooling) * len(backbone.channels)))
            self.global_descriptor = CombinedGlobalDescriptor(
                backbone.channels, card.pooling, branch_dim, standardize=card.backbone_is_frozen
            )
        self.pooled_branches = self.global_descriptor.output_dim // branch_dim
        self.stain_branch = (
            StainColourBranch(
                card.mean,
                card.std,
                card.stain_histogram_bins,
                branch_dim,
                card.stain_variance_floor,
            )
            if card.stain_descriptor
            else None
        )
        head_input = self.global_descriptor.output_dim + (branch_dim if self.stain_branch else 0)
        self.projection = nn.Sequential(
            nn.Linear(head_input, card.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(card.hidden_dim, card.descriptor_dim),
        )
        self.quantizer = product_quantizer(card)
        self.frozen_modules = freeze_backbone(self.trunk, card)

    def train(self, mode: bool = True) -> SPQModel:
        """Training mode everywhere but in frozen backbone parts, which stay in eval mode:
        their BatchNorm statistics must not drift while their weights are fixed."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def descriptor_features(
        self, images: torch.Tensor, stain_images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C) the combined global descriptor of the backbone's output.

        ``stain_images`` (training only): what the stain-colour branch reads instead of
        ``images``, the same crops before colour jitter."""
        if self.card.backbone_is_frozen:
            # Nothing upstream learns: no autograd graph through the backbone (its activations
            # are most of a ViT's training memory).
            with torch.no_grad():
                features = self.trunk(images)
        else:
            features = self.trunk(images)
        pooled = self.pool_backbone_output(features)
        if self.stain_branch is None:
            return pooled
        stain_input = images if stain_images is None else stain_images
        return self.with_stain_branch(pooled, self.stain_branch(stain_input))

    def with_stain_branch(self, pooled: torch.Tensor, stain: torch.Tensor) -> torch.Tensor:
        """The CGD concatenation with the stain-colour branch as one more unit-length branch:
        ``pooled`` is the unit-length concatenation of the backbone's branches, so scaling it by
        the square root of their number gives each branch, the stain's too, the same weight."""
        scale = float(self.pooled_branches) ** 0.5
        return F.normalize(torch.cat([pooled * scale, stain.to(pooled.dtype)], dim=-1), dim=-1)

    def pool_backbone_output(self, features: list[torch.Tensor] | TokenFeatures) -> torch.Tensor:
        """The trunk's output (stage feature maps, or a token model's tokens) -> (N, C) the
        combined global descriptor: where training on cached backbone outputs joins the head."""
        if isinstance(features, TokenFeatures):
            assert isinstance(self.global_descriptor, TokenDescriptor)
            combined: torch.Tensor = self.global_descriptor(
                features.class_token, features.patch_grid
            )
            return combined
        assert isinstance(self.global_descriptor, CombinedGlobalDescriptor)
        pooled: torch.Tensor = self.global_descriptor(features)
        return pooled

    def encode(
        self, images: torch.Tensor, stain_images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 3, S, S) -> (N, M*d) float32, each of the M sub-vectors of unit length
        (``stain_images``: see `descriptor_features`)."""
        return self._project(self.descriptor_features(images, stain_images))

    def encode_backbone_output(self, features: list[torch.Tensor] | TokenFeatures) -> torch.Tensor:
        """The trunk's output for N images -> (N, M*d), as ``encode`` of those images."""
        if self.stain_branch is not None:
            raise ValueError(
                "the stain-colour branch reads the image's pixels, which a backbone output no "
                "longer has: encode the images"
            )
        return self._project(self.pool_backbone_output(features))

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        return unit_descriptor(self.projection(pooled), self.card.num_codebooks)


def freeze_backbone(trunk: ResNetTrunk | TimmTrunk, card: ModelCard) -> list[nn.Module]:
    """Apply the card's training mode to the backbone; return the modules left frozen.

    ``freeze_backbone``: no backbone parameter learns. ``train_last_blocks`` N: only the last N
    residual blocks (and, in a timm model, the norm after them) learn.
    """
    if not card.backbone_is_frozen and card.train_last_blocks is None:
        return []
    trunk.requires_grad_(False)
    trainable: list[nn.Module] = []
    if card.train_last_blocks:
        blocks = trunk.blocks()
        if card.train_last_blocks > len(blocks):
            raise ValueError(
                f"train_last_blocks={card.train_last_blocks} but {card.backbone} has "
                f"{len(blocks)} blocks"
            )
        trainable = blocks[-card.train_last_blocks :]
        if isinstance(trunk, TimmTrunk):
            trainable += trunk.final_norms()
    for module in trainable:
        module.requires_grad_(True)
    return [
        module
        for module in trunk.modules()
        if any(True for _ in module.parameters(recurse=False))
        and not any(parameter.requires_grad for parameter in module.parameters())
    ]


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops_per_image(model: SPQModel) -> int:
    """FLOPs of one ``encode`` at the card's input size (multiply-add counted as 2).

    Counted on a copy of the architecture on the meta device, which has shapes and no data: no
    forward pass runs (one would take seconds for a ViT-g on a CPU).
    """
    size = model.card.input_size
    with torch.device("meta"):
        shadow = SPQModel(model.card).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        shadow.encode(torch.zeros(1, 3, size, size, device="meta"))
    return int(counter.get_total_flops())


def build_model(card: ModelCard, backbone_weights: Path | str | None = None) -> SPQModel:
    """Build an SPQ model; its card gets the parameter count and FLOPs filled in.

    ``backbone_weights``: a local weights file (.safetensors, .bin, .pth), ``"torchvision"`` for
    torchvision's ImageNet weights of a ResNet or ``"hub"`` for timm's hub loader of a preset (both
    need the internet once), or None for random initialisation. The card records where the
    weights came from, their SHA-256 and the backbone's embedding size.
    """
    model = SPQModel(card, backbone_weights)
    model.card = model.card.model_copy(
        update={
            "parameter_count": count_parameters(model),
            "flops_per_image": count_flops_per_image(model),
        }
    )
    return model
