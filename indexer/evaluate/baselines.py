"""Reference descriptors that any learned model must beat on the same split.

- colour histogram: a joint RGB histogram, which already separates many H&E tissue classes
  (fat is white, lymphocytes are dark blue, stroma is pink);
- random backbone: the model's own architecture with random weights, average-pooled, which
  shows what the architecture gives before any training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model import ModelCard
from model.backbones import build_backbone
from model.preprocess import preprocess, to_rgb

HISTOGRAM_BINS_PER_CHANNEL = 8


def colour_histograms(
    images: Sequence[Image.Image], bins: int = HISTOGRAM_BINS_PER_CHANNEL
) -> torch.Tensor:
    """(N, bins^3) joint RGB histograms, square-rooted (Hellinger) so cosine compares them well."""
    rows = []
    for image in images:
        pixels = np.asarray(to_rgb(image), dtype=np.uint8).reshape(-1, 3).astype(np.int64)
        quantised = pixels * bins // 256
        flat = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]
        counts = np.bincount(flat, minlength=bins**3).astype(np.float32)
        rows.append(np.sqrt(counts / counts.sum()))
    return torch.from_numpy(np.stack(rows))


class RandomBackboneDescriptor:
    """The card's backbone with seeded random weights, average-pooled to (N, C), unit length."""

    def __init__(self, card: ModelCard, device: torch.device, seed: int = 0) -> None:
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)
        trunk, _ = build_backbone(card.backbone, card.small_input_stem)
        torch.set_rng_state(generator_state)
        self.trunk = trunk.to(device).eval()
        self.card = card
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        batch = preprocess(images, self.card).to(self.device)
        pooled = self.trunk(batch)[-1].mean(dim=(2, 3))
        return F.normalize(pooled, dim=1).cpu()
