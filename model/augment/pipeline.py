"""The augmentation recipe as one nn.Module that runs on whole batches."""

from __future__ import annotations

from torch import nn

from model.augment.colour import colour_jitter, random_blur, random_grayscale
from model.augment.config import AugmentationConfig
from model.augment.geometry import dihedral_symmetries, random_resized_crop, random_rotation
from model.augment.stain import RandomHEDJitter


def build_geometric_augmentation(config: AugmentationConfig, output_size: int) -> nn.Sequential:
    """Images (N, 3, H, W) in [0, 1] -> (N, 3, S, S) crops: rotation, crop, dihedral turns."""
    steps: list[nn.Module] = []
    if config.rotation_degrees > 0 and config.rotation_p > 0:
        steps.append(random_rotation(config.rotation_degrees, config.rotation_p))
    steps.append(random_resized_crop(output_size, config.min_crop_scale))
    if config.dihedral:
        steps += dihedral_symmetries()
    return nn.Sequential(*steps)


def build_photometric_augmentation(config: AugmentationConfig, output_size: int) -> nn.Sequential:
    """(N, 3, S, S) crops in [0, 1] -> the same crops with stain, colour and blur jitter."""
    steps: list[nn.Module] = []
    if config.hed_p > 0:
        steps.append(RandomHEDJitter(config.hed_scale, config.hed_shift, config.hed_p))
    if config.colour_p > 0:
        steps.append(colour_jitter(config.colour_strength, config.hue, config.colour_p))
    if config.grayscale_p > 0:
        steps.append(random_grayscale(config.grayscale_p))
    if config.blur_p > 0:
        steps.append(random_blur(output_size, config.blur_p))
    return nn.Sequential(*steps)


def build_augmentation(config: AugmentationConfig, output_size: int) -> nn.Sequential:
    """Images (N, 3, H, W) in [0, 1] -> augmented views (N, 3, S, S) in [0, 1]: the geometric
    steps, then the photometric ones."""
    return nn.Sequential(
        *build_geometric_augmentation(config, output_size),
        *build_photometric_augmentation(config, output_size),
    )
