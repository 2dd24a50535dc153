"""A small registry of convolutional backbones that return a spatial feature map.

Each entry builds a torchvision network without its classifier and pooling, so the global
descriptor head can pool the last feature map its own way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    stage_channels: tuple[int, int, int, int]
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
    "resnet18": BackboneSpec(_resnet18, (64, 128, 256, 512), "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": BackboneSpec(_resnet34, (64, 128, 256, 512), "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": BackboneSpec(_resnet50, (256, 512, 1024, 2048), "ResNet50_Weights.IMAGENET2K_V2"),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(sorted(BACKBONES))
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid: {valid}") from None


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to the deepest of ``stages`` (1-4, its residual stages):
    images -> one (N, C_s, h_s, w_s) feature map per requested stage, shallowest first.

    Stages deeper than the deepest requested one are not built, so they cost nothing.
    """

    def __init__(self, resnet: Any, small_input_stem: bool, stages: Sequence[int] = (4,)) -> None:
        super().__init__()
        self.output_stages = tuple(sorted(set(stages)))
        if not self.output_stages or not set(self.output_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"stages must be a non-empty subset of 1, 2, 3, 4, got {stages}")
        if small_input_stem:
            # Tiles of 64-150 px lose most of their detail to the 7x7/2 conv + max-pool stem
            # (stride 4). A 3x3/1 conv without max-pool keeps it, as in CIFAR-style ResNets.
            width = resnet.conv1.out_channels
            resnet.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        layers = (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.stages = nn.Sequential(*layers[: self.output_stages[-1]])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.stem(images)
        outputs = []
        for number, stage in enumerate(self.stages, start=1):
            features = stage(features)
            if number in self.output_stages:
                outputs.append(features)
        return outputs


def build_backbone(
    name: str,
    small_input_stem: bool,
    weights: Path | str | None = None,
    stages: Sequence[int] = (4,),
) -> tuple[ResNetTrunk, list[int]]:
    """Build a trunk and return it with the channel count of each feature map it returns.

    ``weights`` is a local state-dict file, or ``"torchvision"`` for torchvision's ImageNet
    weights (downloaded on first use, so only where the machine can reach the internet).
    Stem weights are skipped when the small-input stem replaces the pretrained one.
    """
    spec = backbone_spec(name)
    resnet = spec.factory()
    if weights is not None:
        _load_backbone_weights(resnet, name, weights, small_input_stem)
    trunk = ResNetTrunk(resnet, small_input_stem, stages)
    return trunk, [spec.stage_channels[stage - 1] for stage in trunk.output_stages]


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
