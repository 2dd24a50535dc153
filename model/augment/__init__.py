"""Batch augmentations for self-supervised training on H&E tiles (kornia, on the batch's device)."""

from model.augment.pipeline import AugmentationConfig, build_augmentation
from model.augment.stain import RandomHEDJitter

__all__ = ["AugmentationConfig", "RandomHEDJitter", "build_augmentation"]
