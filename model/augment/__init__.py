"""Batch augmentations for self-supervised training on H&E tiles (kornia, on the batch's device).

`AugmentationConfig` is importable without torch; the modules are loaded on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.augment.config import AugmentationConfig
    from model.augment.pipeline import build_augmentation
    from model.augment.stain import RandomHEDJitter

# Exported name -> the module that defines it (keep in step with the imports above).
_SOURCES = {
    "AugmentationConfig": "model.augment.config",
    "RandomHEDJitter": "model.augment.stain",
    "build_augmentation": "model.augment.pipeline",
}

__all__ = ["AugmentationConfig", "RandomHEDJitter", "build_augmentation"]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
