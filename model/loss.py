"""Cross Quantized Contrastive loss (SPQ, Jang & Cho, ICCV 2021) and a codeword regulariser."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(anchors: torch.Tensor, partners: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N rows of [anchors; partners], row i's positive being its cross partner.

    anchors, partners: (N, D); similarities are cosines divided by the temperature; each row's
    negatives are the other 2N - 2 rows. Returns the mean over the 2N rows.
    """
    batch = anchors.shape[0]
    rows = F.normalize(torch.cat([anchors, partners], dim=0), dim=-1)
    logits = rows @ rows.T / temperature
    # A row is never its own negative; the mask follows the batch size of the input.
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=rows.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(rows.device)
    return F.cross_entropy(logits, positive)


class CrossQuantizedContrastiveLoss(nn.Module):
    """CQC: contrast each view's descriptor with the other view's soft-quantised descriptor.

    Inputs (all (N, D), N taken from the input): x_a, x_b the continuous descriptors of two
    augmented views of the same N images, z_a, z_b their soft-quantised descriptors.
    Loss = (NT-Xent([x_a; z_b]) + NT-Xent([x_b; z_a])) / 2, with cosine similarity divided by
    ``temperature`` (0.5 in SPQ). With perfectly aligned pairs and mutually orthogonal images each
    term equals log(1 + (2N - 2) exp(-1 / temperature)).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(
        self, x_a: torch.Tensor, z_a: torch.Tensor, x_b: torch.Tensor, z_b: torch.Tensor
    ) -> torch.Tensor:
        if not x_a.shape == z_a.shape == x_b.shape == z_b.shape:
            raise ValueError("x_a, z_a, x_b, z_b must share one (N, D) shape")
        if x_a.shape[0] < 2:
            raise ValueError("the contrastive loss needs at least 2 images per batch")
        forward = nt_xent(x_a, z_b, self.temperature)
        backward = nt_xent(x_b, z_a, self.temperature)
        return (forward + backward) / 2


class CodewordUsageRegularizer(nn.Module):
    """Penalise codebooks whose batch-average soft assignment is uneven (codebook collapse).

    Input: (N, M, K) soft assignment probabilities. Output: 1 - H(mean_n p) / log K averaged over
    the M sub-spaces; 0 when a batch spreads evenly over all K codewords, 1 at full collapse. It
    pushes usage apart across images without asking any single image to be ambiguous.
    """

    def forward(self, assignment: torch.Tensor) -> torch.Tensor:
        usage = assignment.mean(dim=0)  # (M, K)
        entropy = -(usage * usage.clamp(min=1e-12).log()).sum(dim=-1)
        return (1.0 - entropy / math.log(assignment.shape[-1])).mean()
