"""A small registry of convolutional backbones that return a spatial feature map.

Each entry builds a torchvision network without its classifier and pooling, so the global
descriptor head can pool the last feature map its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class UnknownBackboneError(ValueError):
    """A backbone name that is not in the registry."""


@dataclass(frozen=True)
class BackboneSpec:
    factory: Callable[[], Any]
    feature_channels: int
    torchvision_weights: str


def _resnet18() -> Any:
    from torchvision.models import resnet18

    return resnet18(weights=None)


def _resnet34() -> Any:
    from torchvision.models import resnet34

    return resnet34(weights=None)


def _resnet50() -> Any:
    from torchvision.models import resnet50

    return resnet50(weights=None)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(_resnet18, 512, "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": BackboneSpec(_resnet34, 512, "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": BackboneSpec(_resnet50, 2048, "ResNet50_Weights.IMAGENET2K_V2"),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(sorted(BACKBONES))
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid: {valid}") from None


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to its last residual stage: images -> (N, C, h, w)."""

    def __init__(self, resnet: Any, small_input_stem: bool) -> None:
        super().__init__()
        if small_input_stem:
            # Tiles of 64-150 px lose most of their detail to the 7x7/2 conv + max-pool stem
            # (stride 4). A 3x3/1 conv without max-pool keeps it, as in CIFAR-style ResNets.
            width = resnet.conv1.out_channels
            resnet.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.Sequential(resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.stages(self.stem(images))
        return features


def build_backbone(
    name: str,
    small_input_stem: bool,
    weights: Path | str | None = None,
) -> tuple[ResNetTrunk, int]:
    """Build a trunk and return it with its number of output channels.

    ``weights`` is a local state-dict file, or ``"torchvision"`` for torchvision's ImageNet
    weights (downloaded on first use, so only where the machine can reach the internet).
    Stem weights are skipped when the small-input stem replaces the pretrained one.
    """
    spec = backbone_spec(name)
    resnet = spec.factory()
    if weights is not None:
        _load_backbone_weights(resnet, name, weights, small_input_stem)
    return ResNetTrunk(resnet, small_input_stem), spec.feature_channels


def _load_backbone_weights(
    resnet: Any, name: str, weights: Path | str, small_input_stem: bool
) -> None:
    if weights == "torchvision":
        from torchvision.models import get_weight

        state = get_weight(backbone_spec(name).torchvision_weights).get_state_dict(progress=False)
    else:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if small_input_stem:
        state.pop("conv1.weight", None)
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    allowed_missing = {"fc.weight", "fc.bias"} | ({"conv1.weight"} if small_input_stem else set())
    if unexpected or set(missing) - allowed_missing:
        raise ValueError(
            f"backbone weights {weights} do not fit {name}: "
            f"missing {sorted(set(missing) - allowed_missing)[:5]}, unexpected {unexpected[:5]}"
        )
