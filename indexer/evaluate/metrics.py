"""Retrieval metrics with a group-disjoint gallery, and descriptor extraction for whole datasets.

Every image of the evaluated set is a query against all the others; hits from the query's own
group are removed before ranking, so a tile never finds its twin from the same source image.

Metrics come from rankings (`ranking_metrics`): a method either ranks by a score matrix
(`retrieval_metrics`) or hands in the ranking a search engine returned (the PQ codes are ranked
by the index's own search, so the figures are those of the shipped search path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from indexer.ingest.sources import ArchiveImage
from model.preprocess import open_upright_rgb

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
    """Metrics of a (Q, Q) score matrix (higher = more similar) over one labelled set; see
    `ranking_metrics`."""
    group_ids = _codes_for(groups)
    ranked = rank_group_disjoint(scores.float().cpu(), groups, max(ks))
    gallery_sizes = (group_ids[:, None] != group_ids[None, :]).sum(dim=1)
    real = torch.arange(ranked.shape[1])[None, :] < gallery_sizes[:, None]
    return ranking_metrics(torch.where(real, ranked, -1), labels, groups, ks)


def ranking_metrics(
    ranked: torch.Tensor,
    labels: Sequence[str],
    groups: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Metrics of group-disjoint rankings over one labelled set, each image a query.

    ``ranked`` is (Q, depth): row i lists the positions in the set of the items retrieved for
    item i, best first, none of its own group, and -1 where its gallery ran out.

    AP@k = sum_{i<=k} P@i * rel_i / (relevant items in the top k), 0 when there are none: the
    convention of the SPQ and hashing literature. Majority vote: the most frequent label in the
    top k, ties going to the label ranked first. Queries with an empty gallery (one group only)
    are skipped; a gallery shorter than k simply lowers precision, as a user would see it.
    """
    label_ids = _codes_for(labels)
    group_ids = _codes_for(groups)
    eligible = (group_ids[:, None] != group_ids[None, :]).sum(dim=1) > 0
    depth = max(ks)
    ranked = ranked.long()[:, :depth]
    if ranked.shape[1] < depth:
        padding = torch.full((ranked.shape[0], depth - ranked.shape[1]), -1, dtype=torch.long)
        ranked = torch.cat([ranked, padding], dim=1)
    ranked = ranked[eligible]
    query_labels = label_ids[eligible]
    valid = ranked >= 0
    found_labels = label_ids[ranked.clamp(min=0)]
    relevant = (found_labels == query_labels[:, None]) & valid
    ranked_labels = torch.where(valid, found_labels, -1)
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
    masked = scores.float().cpu().clone()
    masked.fill_diagonal_(float("-inf"))
    return near_duplicate_rate(masked.argmax(dim=1), groups)


def near_duplicate_rate(best: torch.Tensor, groups: Sequence[str]) -> float:
    """`near_duplicate_top1` from (Q,) positions of each query's best match other than itself."""
    group_ids = _codes_for(groups)
    has_mate = (group_ids[:, None] == group_ids[None, :]).sum(dim=1) > 1
    hit = group_ids[best.long()] == group_ids
    return float(hit[has_mate].float().mean()) if bool(has_mate.any()) else float("nan")


def cosine_scores(descriptors: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) cosine similarities."""
    unit = torch.nn.functional.normalize(descriptors.float(), dim=1)
    return unit @ unit.T


def load_images(entries: Sequence[ArchiveImage]) -> list[Image.Image]:
    """Decoded by the project's one rule (EXIF orientation, then RGB), as indexing decodes."""
    return [open_upright_rgb(entry.path) for entry in entries]


def describe_in_batches(
    entries: Sequence[ArchiveImage],
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
    """A method ranked by a (Q, Q) score matrix."""
    return MethodResult(
        name=name,
        metrics=retrieval_metrics(scores, labels, groups, ks),
        near_duplicate_top1=near_duplicate_top1(scores, groups),
    )
