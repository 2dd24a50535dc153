"""Evaluate a trained checkpoint on the held-out groups it was not trained or selected on.

Four descriptor methods on the same images: the PQ codes searched by ADC (queries never
quantised), the float descriptor, an RGB colour histogram and the random-weights backbone.
Outputs: ``evaluation.json``, ``evaluation.md`` and ``precision_at_k.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from indexer.evaluate.baselines import RandomBackboneDescriptor, colour_histograms
from indexer.evaluate.metrics import (
    DEFAULT_KS,
    MethodResult,
    cosine_scores,
    describe_in_batches,
    score_method,
)
from indexer.evaluate.plots import plot_precision_at_k
from indexer.ingest.manifest import ManifestEntry, load_entries
from indexer.learn.config import recorded_config
from indexer.learn.splits import SplitError
from indexer.learn.training import make_split
from model import SPQModel, adc_scores, codeword_usage, load_checkpoint, preprocess, select_device

logger = logging.getLogger(__name__)

METHOD_CODES = "SPQ codes (ADC)"
METHOD_FLOAT = "SPQ float descriptor"
METHOD_HISTOGRAM = "RGB colour histogram"


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
        }


def entries_of_part(checkpoint_model: SPQModel, data: Path, part: str) -> list[ManifestEntry]:
    """The images of one part of the split recorded in the checkpoint's training config
    (``all`` for every labelled image, e.g. a dataset the model never saw)."""
    entries = [entry for entry in load_entries(data) if entry.label is not None]
    if part == "all":
        return entries
    split = make_split(recorded_config(checkpoint_model.card), entries)
    selected = split.entries(entries, part)
    if not selected:
        raise SplitError(f"the split recorded in the checkpoint has no {part} images in {data}")
    return selected


def model_descriptor(
    model: SPQModel, device: torch.device
) -> Callable[[list[Image.Image]], torch.Tensor]:
    @torch.no_grad()
    def describe(images: list[Image.Image]) -> torch.Tensor:
        return model.encode(preprocess(images, model.card).to(device)).cpu()

    return describe


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    part: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    device_preference: str = "auto",
    batch_size: int = 64,
) -> EvaluationReport:
    device = select_device(device_preference)
    model = load_checkpoint(checkpoint, map_location=device)
    entries = entries_of_part(model, data, part)
    labels = [str(entry.label) for entry in entries]
    groups = [entry.group for entry in entries]
    descriptors = describe_in_batches(entries, model_descriptor(model, device), batch_size)
    with torch.no_grad():
        codes = model.codes_from_descriptors(descriptors.to(device)).cpu()
        codebooks = model.codebooks().cpu()
    histograms = describe_in_batches(entries, colour_histograms, batch_size)
    random_backbone = describe_in_batches(
        entries, RandomBackboneDescriptor(model.card, device), batch_size
    )
    scored = {
        METHOD_CODES: adc_scores(descriptors, codes, codebooks),
        METHOD_FLOAT: descriptors @ descriptors.T,
        METHOD_HISTOGRAM: cosine_scores(histograms),
        f"random {model.card.backbone}": cosine_scores(random_backbone),
    }
    return EvaluationReport(
        checkpoint=str(checkpoint),
        dataset=str(data),
        part=part,
        ks=list(ks),
        num_images=len(entries),
        num_groups=len(set(groups)),
        bits=model.card.bits,
        methods=[score_method(name, s, labels, groups, ks) for name, s in scored.items()],
        codeword_usage=codeword_usage(codes, model.card.codebook_size),
    )


def markdown_table(report: EvaluationReport, k: int = 10) -> str:
    """One row per method: P@k, mAP@k, majority-vote accuracy@k, near-duplicate top-1."""
    lines = [
        f"Dataset `{Path(report.dataset).name}`, {report.part} part: {report.num_images} images in "
        f"{report.num_groups} groups; PQ codes of {report.bits} bits; gallery excludes the "
        "query's own group.",
        "",
        f"| method | P@{k} | mAP@{k} | top-{k} vote acc. | P@1 | cluster mate first |",
        "|---|---|---|---|---|---|",
    ]
    for method in report.methods:
        metrics = method.metrics
        lines.append(
            f"| {method.name} | {metrics.precision[k]:.3f} | "
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


def write_report(report: EvaluationReport, out: Path, k: int = 10) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report.as_dict(), indent=2))
    (out / "evaluation.md").write_text(markdown_table(report, k))
    curves = {method.name: method.metrics.precision for method in report.methods}
    plot_precision_at_k(curves, out / "precision_at_k.png", Path(report.dataset).name)
