"""Colour and focus augmentations of the SPQ / SimCLR set."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def colour_jitter(strength: float, hue: float, p: float) -> nn.Module:
    module: nn.Module = K.ColorJitter(strength, strength, strength, hue, p=p)
    return module


def random_grayscale(p: float) -> nn.Module:
    module: nn.Module = K.RandomGrayscale(p=p)
    return module


def random_blur(image_size: int, p: float) -> nn.Module:
    # SimCLR's kernel is 10% of the image side, made odd so the blur stays centred.
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    module: nn.Module = K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=p)
    return module
