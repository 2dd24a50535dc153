"""Backbones from timm: the foundation-model presets and any ``timm:<model_name>`` architecture.

Every model is built with ``pretrained=False`` (nothing is downloaded on construction); weights
come from a file the user passes, or from timm's own ``hf-hub:`` loader only when asked for
(``weights="hub"``) and the machine can reach the hub.

Two kinds of trunk come out:
- token models (ViTs and their relatives) give the class token and the grid of patch tokens, with
  register / prefix tokens dropped (`TokenFeatures`);
- everything else (ConvNeXt, Swin, timm's ResNets) gives its last feature map, channels first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from model.errors import HistosearchError
from model.presets import PRESETS, EmbeddingReadout, Preset, preset_of
from model.weights import BackboneWeightsError, file_sha256, load_strictly, read_state_dict

TIMM_PREFIX = "timm:"
HUB_WEIGHTS = "hub"
# Classifier tensors a published file may carry; the trunks here have no classifier.
HEAD_KEYS = {"head.weight", "head.bias", "fc.weight", "fc.bias"}


class UnknownTimmModelError(HistosearchError, ValueError):
    """A ``timm:<name>`` that timm does not know."""


class HubUnavailableError(HistosearchError, RuntimeError):
    """timm's hub loader failed: no connection, offline mode, or gated/refused access."""


class TokenFeatures(NamedTuple):
    """A token model's output: (N, C) class token (None without one), (N, C, h, w) patch grid."""

    class_token: torch.Tensor | None
    patch_grid: torch.Tensor


@dataclass(frozen=True)
class TimmArchitecture:
    """What ``timm.create_model`` gets: a model name and keyword arguments (layers by name)."""

    model_name: str
    kwargs: dict[str, Any]
    preset: Preset | None

    @property
    def readout(self) -> EmbeddingReadout:
        return self.preset.readout if self.preset else "class_token"


def is_timm_backbone(name: str) -> bool:
    return name in PRESETS or name.startswith(TIMM_PREFIX)


def timm_architecture(name: str) -> TimmArchitecture:
    """The architecture a preset name or ``timm:<model_name>`` stands for."""
    preset = preset_of(name)
    if preset is not None:
        return TimmArchitecture(preset.architecture, preset.create_kwargs(), preset)
    model_name = name.removeprefix(TIMM_PREFIX)
    import timm

    if not name.startswith(TIMM_PREFIX) or not timm.is_model(model_name):
        raise UnknownTimmModelError(
            f"unknown timm backbone {name!r}: give a preset ({', '.join(PRESETS)}) or "
            "timm:<model_name> with a name from timm.list_models()"
        )
    return TimmArchitecture(model_name, {"num_classes": 0}, None)


def timm_preprocessing(name: str) -> dict[str, Any]:
    """Input size, mean and std the backbone was trained with (the preset's, or timm's config)."""
    preset = preset_of(name)
    if preset is not None:
        return {"input_size": preset.input_size, "mean": preset.mean, "std": preset.std}
    architecture = timm_architecture(name)
    import timm

    config = timm.models.get_pretrained_cfg(architecture.model_name)
    if config is None:
        return {}
    return {
        "input_size": int(config.input_size[-1]),
        "mean": tuple(float(value) for value in config.mean),
        "std": tuple(float(value) for value in config.std),
    }


def resolved_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The preset's layer names turned into the classes timm expects."""
    from timm.layers.mlp import SwiGLUPacked

    layers: dict[str, Any] = {"SwiGLUPacked": SwiGLUPacked, "SiLU": nn.SiLU}
    return {
        key: layers[value] if key in ("mlp_layer", "act_layer") else value
        for key, value in kwargs.items()
    }


class TimmTrunk(nn.Module):
    """A timm model without classifier: images -> `TokenFeatures` or [one (N, C, h, w) map]."""

    def __init__(self, network: nn.Module, readout: EmbeddingReadout) -> None:
        super().__init__()
        self.network = network
        self.readout = readout
        self.is_token_model = hasattr(network, "num_prefix_tokens")
        self.has_class_token = (
            self.is_token_model and getattr(network, "cls_token", None) is not None
        )
        self.width = int(network.num_features)  # type: ignore[arg-type]
        # Swin keeps its feature map channels last; the pooling expects channels first.
        self.channels_last = getattr(network, "output_fmt", "NCHW") == "NHWC"

    @property
    def embedding_dim(self) -> int:
        """Size of the embedding the publisher reads out (`embedding`)."""
        return 2 * self.width if self.readout == "class_token+mean_patch" else self.width

    def forward(self, images: torch.Tensor) -> TokenFeatures | list[torch.Tensor]:
        features: torch.Tensor = self.network.forward_features(images)  # type: ignore[operator]
        if not self.is_token_model:
            return [features.permute(0, 3, 1, 2) if self.channels_last else features]
        prefix = int(self.network.num_prefix_tokens)  # type: ignore[arg-type]
        height, width = self._grid_size(images)
        patches = features[:, prefix:]
        grid = patches.transpose(1, 2).reshape(features.shape[0], self.width, height, width)
        return TokenFeatures(features[:, 0] if self.has_class_token else None, grid)

    def _grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        patch_embed: Any = self.network.patch_embed
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if getattr(patch_embed, "dynamic_img_size", False) or getattr(
            self.network, "dynamic_img_size", False
        ):
            height, width = patch_embed.dynamic_feat_size(size)
            return int(height), int(width)
        height, width = patch_embed.grid_size
        return int(height), int(width)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The publisher's embedding: the class token, or class token + mean patch token."""
        output: TokenFeatures | list[torch.Tensor] = self(images)
        if not isinstance(output, TokenFeatures):
            return output[0].mean(dim=(2, 3))
        mean_patch = output.patch_grid.mean(dim=(2, 3))
        if output.class_token is None:
            return mean_patch
        if self.readout == "class_token+mean_patch":
            return torch.cat([output.class_token, mean_patch], dim=-1)
        class_token: torch.Tensor = output.class_token
        return class_token

    def blocks(self) -> list[nn.Module]:
        """The residual blocks, input side first, for training only the last few."""
        network: Any = self.network
        if hasattr(network, "blocks"):
            return list(network.blocks)
        if hasattr(network, "stages"):
            return [
                block
                for stage in network.stages
                for block in getattr(stage, "blocks", list(stage.children()))
            ]
        layers: list[Any] = [getattr(network, f"layer{number}", None) for number in range(1, 5)]
        if all(layer is not None for layer in layers):
            return [block for layer in layers for block in layer]
        raise HistosearchError(
            f"cannot find the blocks of {type(network).__name__} to train only the last ones"
        )

    def final_norms(self) -> list[nn.Module]:
        """Norm layers after the last block, trained with it."""
        return [
            module
            for name in ("norm", "fc_norm", "head_norm")
            if isinstance(module := getattr(self.network, name, None), nn.Module)
        ]


def build_timm_trunk(name: str) -> TimmTrunk:
    """The architecture with random weights (``pretrained=False``: nothing is downloaded)."""
    import timm

    architecture = timm_architecture(name)
    network = timm.create_model(
        architecture.model_name, pretrained=False, **resolved_kwargs(architecture.kwargs)
    )
    return TimmTrunk(network, architecture.readout)


def load_timm_weights(trunk: TimmTrunk, name: str, weights: Path | str) -> tuple[str, str]:
    """Fill the trunk from a local file or, for ``"hub"``, timm's hub loader.

    Returns (where the weights came from, SHA-256 of the file). A file for another architecture
    is refused with the missing and unexpected keys named.
    """
    architecture = timm_architecture(name)
    if weights == HUB_WEIGHTS:
        return _load_from_hub(trunk, name, architecture)
    path = Path(weights)
    state = read_state_dict(path)
    layout = architecture.preset.key_layout if architecture.preset else "timm"
    if layout == "transformers-dinov2" and any(key.startswith("embeddings.") for key in state):
        state = dinov2_transformers_to_timm(state)
    load_strictly(trunk.network, state, f"backbone weights {path} for {name}", HEAD_KEYS)
    return f"file:{path.name}", file_sha256(path)


def _load_from_hub(trunk: TimmTrunk, name: str, architecture: TimmArchitecture) -> tuple[str, str]:
    import timm

    hub = architecture.preset.hub if architecture.preset else None
    if hub is None:
        where = architecture.preset.weights if architecture.preset else "the publisher"
        raise HubUnavailableError(
            f"{name} has no timm hub loader; download its weights ({where}) and pass the file "
            "with --backbone-weights FILE"
        )
    try:
        loaded = timm.create_model(hub, pretrained=True, **resolved_kwargs(architecture.kwargs))
    except Exception as error:  # huggingface_hub raises many kinds; each is explained below
        raise HubUnavailableError(hub_failure_message(name, hub, error)) from None
    load_strictly(trunk.network, loaded.state_dict(), f"{hub} weights for {name}", HEAD_KEYS)
    return hub, _cached_hub_file_sha256(hub.removeprefix("hf-hub:"))


def hub_failure_message(name: str, hub: str, error: Exception) -> str:
    """Say why the hub refused and how to pass a downloaded file instead."""
    from huggingface_hub import errors

    repo = hub.removeprefix("hf-hub:")
    weights = PRESETS[name].weights if name in PRESETS else f"the weights file of {repo}"
    if isinstance(error, errors.GatedRepoError):
        reason = (
            f"access to the gated repository {repo} was refused: accept its licence on its hub "
            "page and log in (`hf auth login`, or HF_TOKEN)"
        )
    elif isinstance(error, errors.RepositoryNotFoundError):
        reason = f"the repository {repo} was not found, or this account has no access to it"
    elif isinstance(error, errors.OfflineModeIsEnabled) or _offline_mode():
        reason = (
            "the hub is unreachable: offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
        )
    elif isinstance(error, OSError | errors.LocalEntryNotFoundError):
        reason = f"the hub is unreachable from this machine and no cached copy exists ({error})"
    else:
        reason = f"{type(error).__name__}: {error}"
    return (
        f"cannot load the {name} weights from {hub}: {reason}. Download {weights} on a machine "
        "that can reach it and pass the file with --backbone-weights FILE"
    )


def _offline_mode() -> bool:
    flags = (
        os.environ.get(variable, "") for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def _cached_hub_file_sha256(repo: str) -> str:
    """SHA-256 of the weights file timm fetched into the hub cache ("" if it cannot be found)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return file_sha256(Path(cached))
    return ""


def dinov2_transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face transformers' ``Dinov2Model`` keys -> timm ``VisionTransformer`` keys.

    The two implement the same network (pre-norm blocks with layer scale, GELU MLP, LayerNorm
    eps 1e-6); transformers keeps query, key and value as three linear layers where timm fuses
    them into one ``qkv``, and names the rest differently. Both of transformers' namings are read:
    ``attention.attention.query`` / ``attention.output.dense`` (files saved by transformers 4,
    such as Phikon-v2's) and ``attention.q_proj`` / ``attention.o_proj`` (transformers 5). The
    mask token only serves masked pre-training and is dropped. A key that is absent raises
    `BackboneWeightsError` naming it.
    """
    state = {key.removeprefix("dinov2."): value for key, value in state.items()}
    taken: set[str] = {"embeddings.mask_token"}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise BackboneWeightsError(f"transformers Dinov2 weights lack {key}")
        taken.add(key)
        return state[key]

    renamed: dict[str, torch.Tensor] = {
        "cls_token": take("embeddings.cls_token"),
        "pos_embed": take("embeddings.position_embeddings"),
        "patch_embed.proj.weight": take("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": take("layernorm.weight"),
        "norm.bias": take("layernorm.bias"),
    }
    layers = sorted({int(key.split(".")[2]) for key in state if key.startswith("encoder.layer.")})
    for layer in layers:
        source, target = f"encoder.layer.{layer}.", f"blocks.{layer}."
        old_naming = f"{source}attention.attention.query.weight" in state
        parts = (
            [f"attention.attention.{part}" for part in ("query", "key", "value")]
            if old_naming
            else [f"attention.{part}_proj" for part in ("q", "k", "v")]
        )
        output = "attention.output.dense" if old_naming else "attention.o_proj"
        for kind in ("weight", "bias"):
            renamed[f"{target}attn.qkv.{kind}"] = torch.cat(
                [take(f"{source}{part}.{kind}") for part in parts]
            )
            renamed[f"{target}attn.proj.{kind}"] = take(f"{source}{output}.{kind}")
            for same in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                renamed[f"{target}{same}.{kind}"] = take(f"{source}{same}.{kind}")
        renamed[f"{target}ls1.gamma"] = take(f"{source}layer_scale1.lambda1")
        renamed[f"{target}ls2.gamma"] = take(f"{source}layer_scale2.lambda1")
    # Keys not taken survive, so that the strict load names them as unexpected.
    renamed.update({key: value for key, value in state.items() if key not in taken})
    return renamed


__all__ = [
    "HUB_WEIGHTS",
    "TIMM_PREFIX",
    "BackboneWeightsError",
    "HubUnavailableError",
    "TimmTrunk",
    "TokenFeatures",
    "UnknownTimmModelError",
    "build_timm_trunk",
    "is_timm_backbone",
    "load_timm_weights",
    "timm_architecture",
    "timm_preprocessing",
]
