"""Stain jitter in HED space (Tellez et al. 2019): the main nuisance between histology labs.

Each RGB pixel is turned into optical density, unmixed into haematoxylin, eosin and DAB amounts
with the Ruifrok-Johnston matrix, each stain amount is scaled and shifted by a per-image random
factor, and the result is mixed back to RGB.
"""

from __future__ import annotations

import torch
from torch import nn

# Ruifrok & Johnston stain vectors (rows: H, E, DAB), as in scikit-image's rgb_from_hed.
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
# One grey level: keeps log() finite on pure black pixels.
MIN_INTENSITY = 1.0 / 255.0


class RandomHEDJitter(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> same, with stain amounts scaled by U(1-s, 1+s) and shifted by
    U(-b, b) per image and per stain, applied with probability ``p`` to each image."""

    def __init__(self, scale: float = 0.05, shift: float = 0.05, p: float = 0.8) -> None:
        super().__init__()
        if not 0 <= p <= 1 or scale < 0 or shift < 0:
            raise ValueError("HED jitter needs scale >= 0, shift >= 0 and 0 <= p <= 1")
        self.scale = scale
        self.shift = shift
        self.p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        device, dtype = images.device, images.dtype
        optical_density = -images.clamp(min=MIN_INTENSITY).log()
        stains = torch.einsum("nchw,cs->nshw", optical_density, HED_FROM_RGB.to(device, dtype))
        alpha = 1 + (torch.rand(batch, 3, 1, 1, device=device, dtype=dtype) * 2 - 1) * self.scale
        beta = (torch.rand(batch, 3, 1, 1, device=device, dtype=dtype) * 2 - 1) * self.shift
        applied = torch.rand(batch, 1, 1, 1, device=device) < self.p
        alpha = torch.where(applied, alpha, torch.ones_like(alpha))
        beta = torch.where(applied, beta, torch.zeros_like(beta))
        jittered = stains * alpha + beta
        mixed = torch.einsum("nshw,sc->nchw", jittered, RGB_FROM_HED.to(device, dtype))
        return torch.exp(-mixed).clamp(0.0, 1.0)
