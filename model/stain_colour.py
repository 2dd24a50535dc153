"""A stain-colour global descriptor computed from the pixels: optical-density statistics.

H&E colour separates tissue types (fat is white, lymphocytes dark blue, stroma pink, mucus pale
blue): a joint RGB histogram alone retrieves the right class for 45% (Kather) to 86% (LC25000) of
the top ten. A CNN trained from scratch on a few hundred tiles under colour jitter keeps less of
that cue than the histogram has (docs/model.md, "Why the recipe fell to the baselines"), so the
CGD head can take this descriptor as one more branch beside SPoC / MAC / GeM.

Optical density OD = -ln(I) per RGB channel (I in [0, 1], floored at one grey level) is linear in
the amount of stain (Beer-Lambert), so its statistics measure stain amounts rather than
brightness. The descriptor is, per image:
- the mean and the standard deviation of OD in each channel (6 numbers), and
- the square root (Hellinger) of the joint histogram of OD, ``bins`` per channel over
  [0, `OD_HISTOGRAM_MAX`), the last bin open-ended.
It has no weights; the branch that projects it does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# One grey level: keeps log() finite on pure black pixels (as the HED stain jitter does).
MIN_INTENSITY = 1.0 / 255.0
# OD 2.0 is intensity 0.135: darker pixels (nuclei at their darkest, folds, ink) share the top
# bin, which spends the resolution of the other bins on the OD range of H&E tissue (0-1.5).
OD_HISTOGRAM_MAX = 2.0
DEFAULT_BINS = 6


def optical_density(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) optical density -ln(I), I floored."""
    return -images.clamp(min=MIN_INTENSITY, max=1.0).log()


def optical_density_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 6): per-channel OD mean, then per-channel OD standard
    deviation (population, over the pixels)."""
    density = optical_density(images.float()).flatten(2)
    return torch.cat([density.mean(dim=2), density.std(dim=2, unbiased=False)], dim=1)


def optical_density_histogram(images: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, bins^3) square root of the joint OD histogram, bins
    uniform over [0, OD_HISTOGRAM_MAX) per channel (darker pixels in the last bin); bin index
    (r * bins + g) * bins + b; each row's squares sum to 1."""
    density = optical_density(images.float()).flatten(2)  # (N, 3, P)
    quantised = (density * (bins / OD_HISTOGRAM_MAX)).long().clamp(max=bins - 1)
    flat = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]  # (N, P)
    counts = torch.zeros(flat.shape[0], bins**3, device=images.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    return (counts / flat.shape[1]).sqrt()


class StainColourDescriptor(nn.Module):
    """Normalised network input (N, 3, S, S) -> (N, 6 + bins^3) OD statistics and histogram.

    The network's input is normalised with the card's mean and std; they are undone here to get
    the pixels back. No gradient flows into the image (there is nothing upstream to learn)."""

    def __init__(
        self,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__()
        self.bins = bins
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.output_dim = 6 + bins**3

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = normalised.float() * self.std + self.mean
            return torch.cat(
                [optical_density_statistics(pixels), optical_density_histogram(pixels, self.bins)],
                dim=1,
            )


class StainColourBranch(nn.Module):
    """The stain-colour descriptor as one CGD branch: standardised, projected, L2-normalised.

    Standardisation (batch statistics in training, running ones at inference, no learned scale)
    first: raw OD statistics and histograms of H&E tiles are alike (most of their length is what
    every tile shares), and a linear layer on them starts out giving every tile nearly the same
    vector. The variance floor keeps bins that are empty in almost every tile from being blown
    up by the few pixels that fall in them."""

    def __init__(
        self,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        bins: int,
        output_dim: int,
        variance_floor: float,
    ) -> None:
        super().__init__()
        self.describe = StainColourDescriptor(mean, std, bins)
        self.standardise = nn.BatchNorm1d(
            self.describe.output_dim, eps=variance_floor, affine=False
        )
        self.projection = nn.Linear(self.describe.output_dim, output_dim)

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        features = self.standardise(self.describe(normalised))
        return F.normalize(self.projection(features), dim=-1)
