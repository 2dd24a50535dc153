"""The backbones a card can name, each returning features for the global descriptor head.

- torchvision ResNets (``resnet18``, ``resnet34``, ``resnet50``): one feature map per requested
  residual stage, without classifier and pooling, so the head pools them its own way;
- timm architectures (`model.timm_backbones`): a foundation-model preset (``uni``, ``virchow2``,
  ... see `model.presets`) or ``timm:<model_name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.errors import HistosearchError
from model.presets import PRESETS
from model.timm_backbones import (
    TIMM_PREFIX,
    TimmTrunk,
    build_timm_trunk,
    is_timm_backbone,
    load_timm_weights,
)
from model.weights import file_sha256, load_strictly, read_state_dict


class UnknownBackboneError(HistosearchError, ValueError):
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
        valid = ", ".join([*sorted(BACKBONES), *PRESETS, f"{TIMM_PREFIX}<model_name>"])
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

    def blocks(self) -> list[nn.Module]:
        """The residual blocks that are built, input side first."""
        stages: list[nn.Sequential] = list(self.stages)  # type: ignore[arg-type]
        return [block for stage in stages for block in stage]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.stem(images)
        outputs = []
        for number, stage in enumerate(self.stages, start=1):
            features = stage(features)
            if number in self.output_stages:
                outputs.append(features)
        return outputs


@dataclass(frozen=True)
class Backbone:
    """A built trunk, what it feeds the head, and where its weights came from."""

    trunk: ResNetTrunk | TimmTrunk
    # Channels of each feature map (ResNets), or the token width (one entry) of a timm trunk.
    channels: list[int]
    # The embedding the backbone's publisher reads out (for a ResNet: its deepest map's channels).
    embedding_dim: int
    weights_source: str = ""  # "" for random weights, else "file:NAME", a hub id, "torchvision:..."
    weights_sha256: str = ""

    @property
    def is_token_model(self) -> bool:
        return isinstance(self.trunk, TimmTrunk) and self.trunk.is_token_model


def build_backbone(
    name: str,
    small_input_stem: bool,
    weights: Path | str | None = None,
    stages: Sequence[int] = (4,),
) -> tuple[ResNetTrunk | TimmTrunk, list[int]]:
    """Build a trunk and return it with the channel count of each feature map it returns."""
    backbone = load_backbone(name, small_input_stem, weights, stages)
    return backbone.trunk, backbone.channels


def load_backbone(
    name: str,
    small_input_stem: bool,
    weights: Path | str | None = None,
    stages: Sequence[int] = (4,),
) -> Backbone:
    """Build the named backbone, with random weights or those of ``weights``.

    ``weights`` is a local weights file (.safetensors, .bin, .pth), ``"torchvision"`` for
    torchvision's ImageNet weights of a ResNet, or ``"hub"`` for timm's ``hf-hub:`` loader of a
    preset; the last two download, so only where the machine can reach the internet. ResNet stem
    weights are skipped when the small-input stem replaces the pretrained one.
    """
    if is_timm_backbone(name):
        if small_input_stem:
            raise UnknownBackboneError(
                f"small_input_stem applies to torchvision ResNets, not {name}"
            )
        trunk = build_timm_trunk(name)
        source, digest = ("", "") if weights is None else load_timm_weights(trunk, name, weights)
        return Backbone(trunk, [trunk.width], trunk.embedding_dim, source, digest)
    spec = backbone_spec(name)
    resnet = spec.factory()
    source, digest = "", ""
    if weights is not None:
        source, digest = _load_resnet_weights(resnet, name, weights, small_input_stem, stages)
    resnet_trunk = ResNetTrunk(resnet, small_input_stem, stages)
    channels = [spec.stage_channels[stage - 1] for stage in resnet_trunk.output_stages]
    return Backbone(resnet_trunk, channels, spec.stage_channels[-1], source, digest)


def _load_resnet_weights(
    resnet: Any, name: str, weights: Path | str, small_input_stem: bool, stages: Sequence[int]
) -> tuple[str, str]:
    if weights == "torchvision":
        from torchvision.models import get_weight

        enum = get_weight(backbone_spec(name).torchvision_weights)
        state = enum.get_state_dict(progress=False)
        source = f"torchvision:{backbone_spec(name).torchvision_weights}"
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        digest = file_sha256(cached) if cached.is_file() else _state_sha256(state)
    else:
        state = read_state_dict(Path(weights))
        source, digest = f"file:{Path(weights).name}", file_sha256(Path(weights))
    ignored = {"fc.weight", "fc.bias"} | ({"conv1.weight"} if small_input_stem else set())
    # Stages deeper than the deepest one used are not built: a file may leave them out (the trunk
    # of a model trained on stages 2 and 3 has no layer4), and one that has them loads too.
    unbuilt = tuple(f"layer{stage}." for stage in range(max(stages) + 1, 5))
    ignored |= {key for key in (*state, *resnet.state_dict()) if key.startswith(unbuilt)}
    description = f"backbone weights {weights} for {name}"
    load_strictly(resnet, state, description, ignored)
    return source, digest


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of the tensors themselves, where the file they came from cannot be found."""
    digest = sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
