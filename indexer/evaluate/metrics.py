"""Retrieval metrics with a group-disjoint gallery, and descriptor extraction for whole datasets.

Every image of the evaluated set is a query against all the others; hits from the query's own
group are removed before ranking, so a tile never finds its twin from the same source image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from indexer.ingest.manifest import ManifestEntry

DEFAULT_KS = (1, 5, 10, 20, 50)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Per-k means over queries: precision@k, mAP@k and majority-vote top-k accuracy."""

    ks: tuple[int, ...]
    precision: dict[int, float]
    mean_average_precision: dict[int, float]
    majority_vote_accuracy: dict[int, float]
    num_queries: int

    def as_dict(self) -> dict[str, object]:
        return {
            "num_queries": self.num_queries,
            "precision_at": {str(k): v for k, v in self.precision.items()},
            "map_at": {str(k): v for k, v in self.mean_average_precision.items()},
            "majority_vote_accuracy_at": {
                str(k): v for k, v in self.majority_vote_accuracy.items()
            },
        }


def _codes_for(values: Sequence[str]) -> torch.Tensor:
    index = {value: position for position, value in enumerate(sorted(set(values)))}
    return torch.tensor([index[value] for value in values], dtype=torch.long)


def rank_group_disjoint(scores: torch.Tensor, groups: Sequence[str], depth: int) -> torch.Tensor:
    """(Q, Q) similarity scores of a set against itself -> (Q, depth) gallery indices, best first,
    never from the query's own group (self included)."""
    group_ids = _codes_for(groups).to(scores.device)
    same_group = group_ids[:, None] == group_ids[None, :]
    masked = scores.masked_fill(same_group, float("-inf"))
    depth = min(depth, scores.shape[1])
    return masked.topk(depth, dim=1).indices


def retrieval_metrics(
    scores: torch.Tensor,
    labels: Sequence[str],
    groups: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Metrics of a (Q, Q) score matrix (higher = more similar) over one labelled set.

    AP@k = sum_{i<=k} P@i * rel_i / (relevant items in the top k), 0 when there are none: the
    convention of the SPQ and hashing literature. Majority vote: the most frequent label in the
    top k, ties going to the label ranked first. Queries with an empty gallery (one group only)
    are skipped; a gallery shorter than k simply lowers precision, as a user would see it.
    """
    label_ids = _codes_for(labels)
    group_ids = _codes_for(groups)
    eligible = (group_ids[:, None] != group_ids[None, :]).sum(dim=1) > 0
    depth = max(ks)
    ranked = rank_group_disjoint(scores.float().cpu(), groups, depth)[eligible]
    query_labels = label_ids[eligible]
    valid = _valid_ranks(group_ids, eligible, ranked.shape[1])
    relevant = (label_ids[ranked] == query_labels[:, None]) & valid
    ranked_labels = torch.where(valid, label_ids[ranked], -1)
    num_classes = int(label_ids.max()) + 1
    return RetrievalMetrics(
        ks=tuple(ks),
        precision={k: float(relevant[:, :k].float().sum(1).div(k).mean()) for k in ks},
        mean_average_precision={k: _map_at(relevant, k) for k in ks},
        majority_vote_accuracy={
            k: _majority_vote_accuracy(ranked_labels[:, :k], query_labels, num_classes) for k in ks
        },
        num_queries=int(eligible.sum()),
    )


def _valid_ranks(group_ids: torch.Tensor, eligible: torch.Tensor, depth: int) -> torch.Tensor:
    """(Q', depth) mask of rank positions that hold a real gallery item (not a masked one)."""
    gallery_sizes = (group_ids[:, None] != group_ids[None, :]).sum(dim=1)[eligible]
    return torch.arange(depth)[None, :] < gallery_sizes[:, None]


def _map_at(relevant: torch.Tensor, k: int) -> float:
    hits = relevant[:, :k].float()
    precision_at_rank = hits.cumsum(dim=1) / torch.arange(1, k + 1)[None, : hits.shape[1]]
    found = hits.sum(dim=1)
    average = (precision_at_rank * hits).sum(dim=1) / found.clamp(min=1)
    return float(torch.where(found > 0, average, torch.zeros_like(average)).mean())


def _majority_vote_accuracy(
    ranked_labels: torch.Tensor, query_labels: torch.Tensor, num_classes: int
) -> float:
    votes = torch.zeros(ranked_labels.shape[0], num_classes + 1)
    votes.scatter_add_(1, ranked_labels.clamp(min=-1) + 1, torch.ones_like(ranked_labels).float())
    votes = votes[:, 1:]  # drop the padding class of masked ranks
    # Break ties towards the better-ranked label: add a tiny bonus decreasing with rank.
    rank_bonus = torch.zeros_like(votes)
    bonus = 1e-3 / torch.arange(1, ranked_labels.shape[1] + 1).float()
    real = ranked_labels >= 0
    rank_bonus.scatter_reduce_(
        1, ranked_labels.clamp(min=0), torch.where(real, bonus, 0.0), reduce="amax"
    )
    predicted = (votes + rank_bonus).argmax(dim=1)
    return float((predicted == query_labels).float().mean())


def near_duplicate_top1(scores: torch.Tensor, groups: Sequence[str]) -> float:
    """Share of queries whose best match (itself excluded) is from its own group, over queries
    whose group has another member: "is the cluster mate ranked first?"."""
    group_ids = _codes_for(groups).to(scores.device)
    masked = scores.float().clone()
    masked.fill_diagonal_(float("-inf"))
    has_mate = (group_ids[:, None] == group_ids[None, :]).sum(dim=1) > 1
    best = masked.argmax(dim=1)
    hit = group_ids[best] == group_ids
    return float(hit[has_mate].float().mean()) if bool(has_mate.any()) else float("nan")


def cosine_scores(descriptors: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) cosine similarities."""
    unit = torch.nn.functional.normalize(descriptors.float(), dim=1)
    return unit @ unit.T


def load_images(entries: Sequence[ManifestEntry]) -> list[Image.Image]:
    images = []
    for entry in entries:
        with Image.open(entry.path) as image:
            image.load()
            images.append(image.copy())
    return images


def describe_in_batches(
    entries: Sequence[ManifestEntry],
    describe: Callable[[list[Image.Image]], torch.Tensor],
    batch_size: int = 64,
) -> torch.Tensor:
    """Apply an image-batch descriptor function to a dataset without holding all images at once."""
    parts = [
        describe(load_images(entries[start : start + batch_size]))
        for start in range(0, len(entries), batch_size)
    ]
    return torch.cat(parts)


@dataclass(frozen=True)
class MethodResult:
    """One descriptor method's metrics on the evaluated set."""

    name: str
    metrics: RetrievalMetrics
    near_duplicate_top1: float

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            **self.metrics.as_dict(),
            "near_duplicate_top1": self.near_duplicate_top1,
        }


def score_method(
    name: str,
    scores: torch.Tensor,
    labels: Sequence[str],
    groups: Sequence[str],
    ks: Sequence[int],
) -> MethodResult:
    return MethodResult(
        name=name,
        metrics=retrieval_metrics(scores, labels, groups, ks),
        near_duplicate_top1=near_duplicate_top1(scores, groups),
    )
