"""Evaluate a trained checkpoint on the held-out groups it was not trained or selected on.

Five descriptor methods on the same images: the PQ codes, the float descriptor, the checkpoint's
own backbone features (pooled, unquantised: the ceiling the codes are measured against; each
method's share of its P@10 is reported), an RGB colour histogram and the random-weights backbone.
The codes are ranked by the shipped search path: an `ArchiveIndex` over the model's codebooks (in
a temporary directory) holds the descriptors' codes and answers each query with
``SearchFilters(exclude_group=...)``, so the figure a user reads is the one the service delivers.
The other methods rank by score matrices.
Outputs: ``evaluation.json``, ``evaluation.md`` and ``precision_at_k.png``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from indexer.evaluate.baselines import RandomBackboneDescriptor, colour_histograms
from indexer.evaluate.metrics import (
    DEFAULT_KS,
    MethodResult,
    cosine_scores,
    describe_in_batches,
    near_duplicate_rate,
    ranking_metrics,
    score_method,
)
from indexer.evaluate.plots import plot_precision_at_k
from indexer.index.protocol import Index
from indexer.index.records import NewItem
from indexer.index.store import ArchiveIndex, SearchFilters
from indexer.ingest.sources import ArchiveImage, load_source
from indexer.learn.config import recorded_config
from indexer.learn.splits import SplitError
from indexer.learn.training import archive_images, make_split
from model import Embedder, ModelCard, SPQModel, codeword_usage, load_checkpoint, select_device
from model.preprocess import preprocess
from model.timm_backbones import TokenFeatures

logger = logging.getLogger(__name__)

METHOD_CODES = "SPQ codes (ADC)"
METHOD_FLOAT = "SPQ float descriptor"
METHOD_HISTOGRAM = "RGB colour histogram"
CEILING_K = 10


def backbone_method_name(card: ModelCard) -> str:
    return f"{card.backbone} float features (ceiling)"


@dataclass
class EvaluationReport:
    checkpoint: str
    dataset: str
    part: str
    ks: list[int]
    num_images: int
    num_groups: int
    bits: int
    methods: list[MethodResult]
    codeword_usage: dict[str, float]
    ceiling: str = ""

    def share_of_ceiling(self, k: int = CEILING_K) -> dict[str, float]:
        """Each method's P@k over the ceiling method's P@k: how much of the backbone's own
        retrieval quality the method keeps (1.0 for the ceiling itself)."""
        by_name = {method.name: method.metrics.precision[k] for method in self.methods}
        ceiling = by_name.get(self.ceiling, 0.0)
        if ceiling <= 0:
            return {}
        return {name: precision / ceiling for name, precision in by_name.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "dataset": self.dataset,
            "part": self.part,
            "ks": self.ks,
            "num_images": self.num_images,
            "num_groups": self.num_groups,
            "bits": self.bits,
            "codeword_usage": self.codeword_usage,
            "methods": [method.as_dict() for method in self.methods],
            "ceiling": self.ceiling,
            f"share_of_ceiling_p{CEILING_K}": (
                self.share_of_ceiling() if CEILING_K in self.ks else {}
            ),
        }


def entries_of_part(
    checkpoint_model: SPQModel, data: Path, part: str, source: str = "auto"
) -> list[ArchiveImage]:
    """The images of one part of the split recorded in the checkpoint's training config
    (``all`` for every labelled image, e.g. a dataset the model never saw). With ``source``
    ``auto`` the archive is listed as training listed it, so the split is the same."""
    listed = archive_images(data) if source == "auto" else load_source(source, data)
    entries = [entry for entry in listed if entry.label is not None]
    if part == "all":
        return entries
    split = make_split(recorded_config(checkpoint_model.card), entries)
    selected = split.entries(entries, part)
    if not selected:
        raise SplitError(f"the split recorded in the checkpoint has no {part} images in {data}")
    return selected


def code_search_result(
    name: str,
    descriptors: npt.NDArray[np.float32],
    codebooks: npt.NDArray[np.float32],
    card: ModelCard,
    labels: Sequence[str],
    groups: Sequence[str],
    ks: Sequence[int],
) -> MethodResult:
    """Metrics of the codes as the index searches them: each image's descriptor quantised by an
    `ArchiveIndex` over ``codebooks``, each query searched with its own group excluded."""
    depth = max(ks)
    with tempfile.TemporaryDirectory(prefix="histosearch-evaluate-") as workdir:
        index = ArchiveIndex.create_from_codebooks(
            Path(workdir) / "index",
            codebooks,
            card=card.model_dump(mode="json"),
            card_key=card.compatibility_key(),
        )
        with index:
            position_of_id = _add_for_evaluation(index, descriptors, groups)
            ranked = np.full((len(groups), depth), -1, dtype=np.int64)
            for group in sorted(set(groups)):
                rows = np.array([i for i, g in enumerate(groups) if g == group])
                _, found = index.search_arrays(
                    descriptors[rows], depth, SearchFilters(exclude_group=group)
                )
                ranked[rows] = _positions(found, position_of_id)
            # The cluster-mate figure searches everything, own group included, and skips self.
            _, nearest = index.search_arrays(descriptors, 2)
    first, second = _positions(nearest, position_of_id).T
    best = np.where(first != np.arange(len(groups)), first, second)
    return MethodResult(
        name=name,
        metrics=ranking_metrics(torch.from_numpy(ranked), labels, groups, ks),
        near_duplicate_top1=near_duplicate_rate(torch.from_numpy(best), groups),
    )


def _add_for_evaluation(
    index: Index, descriptors: npt.NDArray[np.float32], groups: Sequence[str]
) -> npt.NDArray[np.int64]:
    """Add every image (equal twins too) in a seeded shuffled order; returns, per item id, its
    position in the evaluated set (-1 for ids not handed out).

    The index breaks equal scores by id, and 32-bit codes tie often (blocks of 15-20 equal codes
    on Kather tiles). Archives are usually listed class by class, so ids in archive order would
    rank a tied same-class item first: on Kather with random weights, where nearly all codes tie,
    P@10 read 0.125 in archive order against 0.084 for a torch brute force. Shuffled ids carry no
    label, as a brute force's arbitrary tie order carries none.
    """
    order = np.random.default_rng(0).permutation(len(groups))
    items = [
        NewItem(source=str(position), content_hash=f"evaluation-{position}", group=groups[position])
        for position in order
    ]
    outcomes = index.add(descriptors[order], items)
    ids = np.array([outcome.id for outcome in outcomes], dtype=np.int64)
    position_of_id = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int64)
    position_of_id[ids] = order
    return position_of_id


def _positions(
    found: npt.NDArray[np.int64], position_of_id: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Item ids returned by a search -> positions in the evaluated set (-1 stays -1)."""
    return np.where(found >= 0, position_of_id[np.maximum(found, 0)], -1).astype(np.int64)


class BackboneFeatures:
    """The checkpoint's own backbone, pooled without its head: the mean of the last feature map
    (a token model: its class token, or the mean patch token without one), unit length."""

    def __init__(self, model: SPQModel, device: torch.device) -> None:
        self.model = model
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        output = self.model.trunk(preprocess(images, self.model.card).to(self.device))
        self.model.train(was_training)
        return ceiling_features(output)


def ceiling_features(output: list[torch.Tensor] | TokenFeatures) -> torch.Tensor:
    """A trunk's output -> (N, C) unit-length float features on the CPU: a token model's class
    token (the mean patch token without one), else the mean of the last feature map."""
    if isinstance(output, TokenFeatures):
        pooled = (
            output.class_token
            if output.class_token is not None
            else output.patch_grid.mean(dim=(2, 3))
        )
    else:
        pooled = output[-1].mean(dim=(2, 3))
    return F.normalize(pooled.float(), dim=1).cpu()


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    part: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    device_preference: str = "auto",
    batch_size: int = 64,
    source: str = "auto",
) -> EvaluationReport:
    device = select_device(device_preference)
    model = load_checkpoint(checkpoint, map_location=device)
    entries = entries_of_part(model, data, part, source)
    labels = [str(entry.label) for entry in entries]
    groups = [entry.group for entry in entries]
    embedder = Embedder(model, device, batch_size)

    def describe(images: list[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(embedder.embed(images))

    descriptors = describe_in_batches(entries, describe, batch_size)
    with torch.no_grad():
        codes = model.codes_from_descriptors(descriptors.to(device)).cpu()
        codebooks = model.codebooks().detach().cpu().numpy()
    histograms = describe_in_batches(entries, colour_histograms, batch_size)
    random_backbone = describe_in_batches(
        entries, RandomBackboneDescriptor(model.card, device), batch_size
    )
    backbone = describe_in_batches(entries, BackboneFeatures(model, device), batch_size)
    scored = {
        METHOD_FLOAT: descriptors @ descriptors.T,
        backbone_method_name(model.card): cosine_scores(backbone),
        METHOD_HISTOGRAM: cosine_scores(histograms),
        f"random {model.card.backbone}": cosine_scores(random_backbone),
    }
    codes_result = code_search_result(
        METHOD_CODES, descriptors.numpy(), codebooks, model.card, labels, groups, ks
    )
    return EvaluationReport(
        checkpoint=str(checkpoint),
        dataset=str(data),
        part=part,
        ks=list(ks),
        num_images=len(entries),
        num_groups=len(set(groups)),
        bits=model.card.bits,
        methods=[codes_result]
        + [score_method(name, s, labels, groups, ks) for name, s in scored.items()],
        codeword_usage=codeword_usage(codes, model.card.codebook_size),
        ceiling=backbone_method_name(model.card),
    )


def markdown_table(report: EvaluationReport, k: int = 10) -> str:
    """One row per method: P@k, its share of the ceiling's P@k, mAP@k, majority-vote
    accuracy@k, P@1, near-duplicate top-1."""
    shares = report.share_of_ceiling(k)
    lines = [
        f"Dataset `{Path(report.dataset).name}`, {report.part} part: {report.num_images} images in "
        f"{report.num_groups} groups; PQ codes of {report.bits} bits; gallery excludes the "
        "query's own group.",
        "",
        f"| method | P@{k} | share of ceiling P@{k} | mAP@{k} | top-{k} vote acc. | P@1 "
        "| cluster mate first |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in report.methods:
        metrics = method.metrics
        lines.append(
            f"| {method.name} | {metrics.precision[k]:.3f} | "
            f"{_share_cell(shares.get(method.name))} | "
            f"{metrics.mean_average_precision[k]:.3f} | {metrics.majority_vote_accuracy[k]:.3f} "
            f"| {metrics.precision[1]:.3f} | {method.near_duplicate_top1:.3f} |"
        )
    usage = report.codeword_usage
    lines += [
        "",
        f"Codeword usage: {usage['codewords_used']:.2f} of {usage['codebook_size']:.0f} "
        f"codewords per sub-space, perplexity {usage['perplexity']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def _share_cell(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def write_report(report: EvaluationReport, out: Path, k: int = 10) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report.as_dict(), indent=2))
    (out / "evaluation.md").write_text(markdown_table(report, k))
    curves = {method.name: method.metrics.precision for method in report.methods}
    plot_precision_at_k(curves, out / "precision_at_k.png", Path(report.dataset).name)
