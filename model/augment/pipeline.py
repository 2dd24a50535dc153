"""The augmentation recipe: one configuration object, one nn.Module that runs on whole batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from model.augment.colour import colour_jitter, random_blur, random_grayscale
from model.augment.geometry import dihedral_symmetries, random_resized_crop, random_rotation
from model.augment.stain import RandomHEDJitter


@dataclass(frozen=True)
class AugmentationConfig:
    """Strengths of each augmentation; a probability of 0 switches one off.

    The defaults are an H&E recipe: all eight dihedral symmetries, mild stain and colour jitter,
    no grey views. SPQ's SimCLR set (``spq_reference()``: colour jitter 0.4 / hue 0.1, grey p=0.2)
    makes descriptors blind to colour, which on H&E is what tells fat, stroma, lymphocytes and
    mucus apart; it measured worse here.
    """

    min_crop_scale: float = 0.25
    dihedral: bool = True
    rotation_degrees: float = 0.0
    rotation_p: float = 0.8
    hed_scale: float = 0.03
    hed_shift: float = 0.03
    hed_p: float = 0.8
    colour_strength: float = 0.1
    hue: float = 0.02
    colour_p: float = 0.8
    grayscale_p: float = 0.0
    blur_p: float = 0.5

    @classmethod
    def spq_reference(cls) -> AugmentationConfig:
        """The SPQ / SimCLR colour settings, with the H&E geometry and stain jitter kept."""
        return cls(colour_strength=0.4, hue=0.1, grayscale_p=0.2, hed_scale=0.05, hed_shift=0.05)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_augmentation(config: AugmentationConfig, output_size: int) -> nn.Sequential:
    """Images (N, 3, H, W) in [0, 1] -> augmented views (N, 3, S, S) in [0, 1]."""
    steps: list[nn.Module] = []
    if config.rotation_degrees > 0 and config.rotation_p > 0:
        steps.append(random_rotation(config.rotation_degrees, config.rotation_p))
    steps.append(random_resized_crop(output_size, config.min_crop_scale))
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
