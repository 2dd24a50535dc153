"""The augmentation recipe: one configuration object, one nn.Module that runs on whole batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from model.augment.colour import colour_jitter, random_blur, random_grayscale
from model.augment.geometry import dihedral_symmetries, random_resized_crop
from model.augment.stain import RandomHEDJitter


@dataclass(frozen=True)
class AugmentationConfig:
    """Strengths of each augmentation; a probability of 0 switches one off."""

    min_crop_scale: float = 0.25
    dihedral: bool = True
    hed_scale: float = 0.05
    hed_shift: float = 0.05
    hed_p: float = 0.8
    colour_strength: float = 0.4
    hue: float = 0.1
    colour_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_augmentation(config: AugmentationConfig, output_size: int) -> nn.Sequential:
    """Images (N, 3, H, W) in [0, 1] -> augmented views (N, 3, S, S) in [0, 1]."""
    steps: list[nn.Module] = [random_resized_crop(output_size, config.min_crop_scale)]
    if config.dihedral:
        steps += dihedral_symmetries()
    if config.hed_p > 0:
        steps.append(RandomHEDJitter(config.hed_scale, config.hed_shift, config.hed_p))
    if config.colour_p > 0:
        steps.append(colour_jitter(config.colour_strength, config.hue, config.colour_p))
    if config.grayscale_p > 0:
        steps.append(random_grayscale(config.grayscale_p))
    if config.blur_p > 0:
        steps.append(random_blur(output_size, config.blur_p))
    return nn.Sequential(*steps)
