"""Global descriptors from a feature map, combined CGD-style (Jun et al., arXiv 1903.10663).

Each pooling method gives a (N, C) vector; each goes through its own linear layer and L2 norm,
the results are concatenated and L2-normalised again, so no branch dominates by scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SPoC(nn.Module):
    """Sum (average) pooling: how much of each pattern the tile holds."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))


class MAC(nn.Module):
    """Max pooling: whether a pattern occurs anywhere in the tile."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.amax(dim=(2, 3))


class GeM(nn.Module):
    """Generalised mean pooling, between SPoC (p=1) and MAC (p -> inf); p is learned."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        result: torch.Tensor = pooled.pow(1.0 / self.p)
        return result


class AttentionPool(nn.Module):
    """Average weighted by a learned spatial attention map (softmax over positions)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights: torch.Tensor = self.score(features).flatten(2).softmax(dim=-1)  # (N, 1, h*w)
        return (features.flatten(2) * weights).sum(dim=-1)


def make_pool(name: str, channels: int) -> nn.Module:
    if name == "spoc":
        return SPoC()
    if name == "mac":
        return MAC()
    if name == "gem":
        return GeM()
    if name == "attention":
        return AttentionPool(channels)
    raise ValueError(f"unknown pooling {name!r}; valid: attention, gem, mac, spoc")


def pooled_standardizer(channels: int, standardize: bool) -> nn.Module:
    """Per-dimension standardisation of pooled features (BatchNorm without scale and shift:
    batch statistics in training, their running averages at inference), or nothing.

    For frozen backbones. A random frozen backbone's pooled features point almost one way (mean
    cosine 0.955 and 0.973 between Kather tiles for a random ResNet-18's mean-pooled stages 2
    and 3): a linear layer sees the shared mean and barely the differences,
    every descriptor comes out alike and the CQC loss can stay at its uniform value ln(2N - 1)
    (ln 63 at N = 32). Removing the shared mean and scaling each dimension to unit variance hands
    the head the differences. Measured on Kather's test groups (random ResNet-18 at 64 px, 4
    cached views, 400 head steps, 32 bits): codes P@10 0.430 with it, 0.351 without, against
    0.414 for the backbone's own float features; the loss fell to 2.73 with it, 3.53 without. A
    learning backbone adapts its own features, so heads on learning backbones are built without
    it (and their checkpoints are unchanged).
    """
    return nn.BatchNorm1d(channels, affine=False) if standardize else nn.Identity()


class DescriptorBranch(nn.Module):
    """One pooling of one stage's feature map, optionally standardised, projected and
    L2-normalised."""

    def __init__(
        self,
        stage_position: int,
        pool: nn.Module,
        projection: nn.Linear,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.stage_position = stage_position
        self.pool = pool
        self.standardize = pooled_standardizer(projection.in_features, standardize)
        self.projection = projection

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = self.standardize(self.pool(feature_maps[self.stage_position]))
        return F.normalize(self.projection(pooled), dim=-1)


class CombinedGlobalDescriptor(nn.Module):
    """Feature maps [(N, C_s, h_s, w_s) per stage] -> (N, output_dim) unit-length descriptor.

    Every pooling method is applied to every stage's map; each (stage, method) branch has its own
    linear layer and L2 norm. Shallow stages pooled without order keep colour and fine texture
    statistics (orderless, so unchanged by rotation), which the deepest map of a small tile blurs.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        pooling: Sequence[str],
        branch_dim: int,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            DescriptorBranch(
                position,
                make_pool(name, channels),
                nn.Linear(channels, branch_dim),
                standardize,
            )
            for position, channels in enumerate(stage_channels)
            for name in pooling
        )
        self.output_dim = branch_dim * len(self.branches)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        branches = [branch(feature_maps) for branch in self.branches]
        return F.normalize(torch.cat(branches, dim=-1), dim=-1)


class TokenDescriptor(nn.Module):
    """A token backbone's output -> (N, output_dim) unit-length descriptor, combined as CGD does.

    Branches: the class token, and each pooling method over the grid of patch tokens (register and
    other prefix tokens are not in the grid). Each branch has its own linear layer and L2 norm;
    the concatenation is L2-normalised again. Token features are signed: GeM clamps them at a
    small epsilon, so it pools their positive part, as it pools a ReLU feature map in a CNN.
    """

    def __init__(
        self,
        width: int,
        pooling: Sequence[str],
        branch_dim: int,
        has_class_token: bool,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.class_token_norm = pooled_standardizer(width, standardize and has_class_token)
        self.class_token_projection = nn.Linear(width, branch_dim) if has_class_token else None
        self.grid_branches = nn.ModuleList(
            DescriptorBranch(0, make_pool(name, width), nn.Linear(width, branch_dim), standardize)
            for name in pooling
        )
        self.output_dim = branch_dim * (len(self.grid_branches) + int(has_class_token))

    def forward(self, class_token: torch.Tensor | None, patch_grid: torch.Tensor) -> torch.Tensor:
        """(N, C) class token (None if the backbone has none), (N, C, h, w) patch tokens."""
        branches = [branch([patch_grid]) for branch in self.grid_branches]
        if self.class_token_projection is not None:
            if class_token is None:
                raise ValueError("this descriptor was built for a backbone with a class token")
            projected = self.class_token_projection(self.class_token_norm(class_token))
            branches.insert(0, F.normalize(projected, dim=-1))
        return F.normalize(torch.cat(branches, dim=-1), dim=-1)
