"""Cross Quantized Contrastive loss (SPQ, Jang & Cho, ICCV 2021) and a codeword regulariser."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(
    anchors: torch.Tensor,
    partners: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over the 2N rows of [anchors; partners], row i's positive being its cross partner.

    anchors, partners: (N, D); similarities are cosines divided by the temperature; each row's
    negatives are the other 2N - 2 rows and, when given, every row of ``negatives`` (Q, D), which
    carry no gradient. Returns the mean over the 2N rows.
    """
    batch = anchors.shape[0]
    rows = F.normalize(torch.cat([anchors, partners], dim=0), dim=-1)
    columns = rows
    if negatives is not None and negatives.shape[0] > 0:
        columns = torch.cat([rows, F.normalize(negatives.detach(), dim=-1)], dim=0)
    logits = rows @ columns.T / temperature
    # A row is never its own negative; the mask follows the batch size of the input.
    self_mask = torch.eye(2 * batch, columns.shape[0], dtype=torch.bool, device=rows.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(rows.device)
    return F.cross_entropy(logits, positive)


class RecentRows:
    """The rows of the latest training steps, newest first, detached and in float32, up to
    ``size`` of them (0 keeps none). ``name`` says what they are in errors."""

    name = "rows"

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"the {self.name} size must be 0 or more, got {size}")
        self.size = size
        self._rows: torch.Tensor | None = None

    def contents(self) -> torch.Tensor | None:
        return self._rows

    def push(self, rows: torch.Tensor) -> None:
        """Add ``rows`` (detached) in front; the oldest rows beyond ``size`` leave."""
        if self.size == 0:
            return
        fresh = rows.detach().float()
        joined = fresh if self._rows is None else torch.cat([fresh, self._rows], dim=0)
        self._rows = joined[: self.size]

    def clear(self) -> None:
        self._rows = None


class NegativeQueue(RecentRows):
    """The quantised descriptors of the latest training batches, kept as extra negatives.

    At a batch of 32 each row of the contrastive loss meets 62 negatives; a queue of Q rows adds
    Q more at the cost of a (2N, Q) product, without a larger batch's backbone forwards (the
    cross-batch memory of Wang et al., CVPR 2020, without a momentum encoder: at Q of a few
    hundred rows the oldest entry is a handful of steps old, and the network has barely moved
    since). What is queued is the partners' side of the loss, the soft-quantised descriptors, so
    that a view's continuous descriptor learns to stand apart from other images' codes, as a
    query stands against the archive's codes in search.
    """

    name = "queue"


class NeighbourSupport(RecentRows):
    """The continuous descriptors of the latest training views, searched for each view's nearest
    neighbour, which then stands in for the view as the anchor of its pair (NNCLR, Dwibedi et al.,
    ICCV 2021).

    Two views of one image agree on everything the augmentations leave alone, so instance
    discrimination alone teaches the network to tell each training tile from every other, which
    on a few thousand tiles is memorising them. A nearest neighbour from other batches is most
    often another tile of the same tissue, and pulling a view's codes towards it asks the network
    for what tiles of one kind share instead. The entries carry no gradient.
    """

    name = "support"

    def nearest(self, rows: torch.Tensor) -> torch.Tensor:
        """Each row's most cosine-similar entry (detached); the rows themselves while empty."""
        if self._rows is None:
            return rows.detach()
        query = F.normalize(rows.detach().float(), dim=-1)
        best = (query @ F.normalize(self._rows, dim=-1).T).argmax(dim=1)
        return self._rows[best]


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
        self,
        x_a: torch.Tensor,
        z_a: torch.Tensor,
        x_b: torch.Tensor,
        z_b: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not x_a.shape == z_a.shape == x_b.shape == z_b.shape:
            raise ValueError("x_a, z_a, x_b, z_b must share one (N, D) shape")
        if x_a.shape[0] < 2:
            raise ValueError("the contrastive loss needs at least 2 images per batch")
        forward = nt_xent(x_a, z_b, self.temperature, negatives)
        backward = nt_xent(x_b, z_a, self.temperature, negatives)
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
