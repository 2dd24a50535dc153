"""The SPQ model: network, loss, augmentations, checkpoints with model cards, preprocessing.

Names are loaded on first use (PEP 562): importing a light part (`model.card`, `model.errors`,
`model.augment.config`) does not load torch, so `histosearch --help`, which builds every verb's
options from those configurations, stays instant. `preprocess` (the function) is imported from
`model.preprocess`: a package attribute of that name would be the submodule as soon as it loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.augment import AugmentationConfig, build_augmentation
    from model.backbones import BACKBONES, UnknownBackboneError
    from model.card import ModelCard, ModelSpec
    from model.checkpoint import (
        CheckpointMismatchError,
        load_checkpoint,
        read_card,
        read_checkpoint,
        save_checkpoint,
    )
    from model.embedder import Embedder
    from model.loss import (
        CodewordUsageRegularizer,
        CrossQuantizedContrastiveLoss,
        NegativeQueue,
        NeighbourSupport,
    )
    from model.preprocess import (
        UnsupportedPixelsError,
        normalize,
        select_device,
        to_rgb,
    )
    from model.quantizer import ProductQuantizer, adc_scores, codeword_usage
    from model.spq import SPQModel, build_model

# Exported name -> the module that defines it (keep in step with the imports above).
_SOURCES = {
    "AugmentationConfig": "model.augment",
    "build_augmentation": "model.augment",
    "BACKBONES": "model.backbones",
    "UnknownBackboneError": "model.backbones",
    "ModelCard": "model.card",
    "ModelSpec": "model.card",
    "CheckpointMismatchError": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "read_card": "model.checkpoint",
    "read_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "Embedder": "model.embedder",
    "CodewordUsageRegularizer": "model.loss",
    "CrossQuantizedContrastiveLoss": "model.loss",
    "NegativeQueue": "model.loss",
    "NeighbourSupport": "model.loss",
    "UnsupportedPixelsError": "model.preprocess",
    "normalize": "model.preprocess",
    "select_device": "model.preprocess",
    "to_rgb": "model.preprocess",
    "ProductQuantizer": "model.quantizer",
    "adc_scores": "model.quantizer",
    "codeword_usage": "model.quantizer",
    "SPQModel": "model.spq",
    "build_model": "model.spq",
}

__all__ = [
    "BACKBONES",
    "AugmentationConfig",
    "CheckpointMismatchError",
    "CodewordUsageRegularizer",
    "CrossQuantizedContrastiveLoss",
    "Embedder",
    "ModelCard",
    "ModelSpec",
    "NegativeQueue",
    "NeighbourSupport",
    "ProductQuantizer",
    "SPQModel",
    "UnknownBackboneError",
    "UnsupportedPixelsError",
    "adc_scores",
    "build_augmentation",
    "build_model",
    "codeword_usage",
    "load_checkpoint",
    "normalize",
    "read_card",
    "read_checkpoint",
    "save_checkpoint",
    "select_device",
    "to_rgb",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
