"""Geometric augmentations. Tissue on a slide has no up, down, left or right, so all eight
symmetries of the square (flips and 90-degree rotations) are free and lose no pixels."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def dihedral_symmetries() -> list[nn.Module]:
    return [
        K.RandomHorizontalFlip(p=0.5),
        K.RandomVerticalFlip(p=0.5),
        K.RandomRotation90(times=(0, 3), p=1.0),
    ]


def random_resized_crop(size: int, min_scale: float) -> nn.Module:
    module: nn.Module = K.RandomResizedCrop(
        (size, size), scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3)
    )
    return module


def random_rotation(max_degrees: float, p: float) -> nn.Module:
    """Rotation by up to ``max_degrees`` either way, borders filled by reflection.

    Reflected tissue is still tissue, where zero padding would add black corners that no real
    tile has. Applied before the crop, most of the reflected border is cropped away.
    """
    module: nn.Module = K.RandomAffine(degrees=max_degrees, padding_mode="reflection", p=p)
    return module
