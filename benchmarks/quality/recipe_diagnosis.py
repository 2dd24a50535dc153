"""Why the from-scratch recipe does not beat the simple baselines: cheap measurements, no training.

    python -m benchmarks.quality.recipe_diagnosis [--datasets kather lc25000 pcam idc]

On the VALIDATION groups of the retrieval benchmark's splits
(`benchmarks.quality.retrieval.PLANS`; the test groups are never read), for each shared set:
- colour: the RGB histogram at native size and at the model's 64 px; optical-density (OD)
  statistics and histograms (`model.stain_colour`) as descriptors on their own;
- what the augmentations erase: the histogram's cosine between two augmented views of one image,
  against its cosine between same-class and other-class images of different groups (a view pair
  less alike than a same-class pair teaches the network to ignore what the jitter changes);
- what 64 px keeps: the random-weights ResNet-18 at 64 px and at native size, and how alike its
  pooled features are (mean pairwise cosine) before and after standardisation;
- what 32 bits can hold: the histogram product-quantised to 32 bits (FAISS, 8 x 4 bits, trained on
  the training groups).
Prints a table and writes ``benchmarks/results/recipe_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import REPO_ROOT, RESULTS, write_result
from benchmarks.quality.retrieval import PLANS, DatasetPlan, plan_data
from indexer.evaluate.baselines import RandomBackboneDescriptor, colour_histograms
from indexer.evaluate.metrics import cosine_scores, load_images, retrieval_metrics
from indexer.ingest.sources import ArchiveImage
from indexer.learn.config import TrainConfig
from indexer.learn.training import archive_images, make_split
from model import ModelCard, build_augmentation
from model.augment import AugmentationConfig
from model.preprocess import image_to_tensor
from model.stain_colour import optical_density_histogram, optical_density_statistics

MODEL_INPUT = 64
NATIVE = {"kather": 150, "lc25000": 224, "pcam": 96, "idc": 50}
TRAINING_SAMPLE = 1000


def parts(plan: DatasetPlan) -> tuple[list[ArchiveImage], list[ArchiveImage]]:
    """(training sample, labelled validation images) of the benchmark's split."""
    out = RESULTS / plan.name
    settings = {k: v for k, v in plan.settings.items() if k != "validate_every"}
    config = TrainConfig(data=str(plan_data(plan, out)), out=str(out), **settings)
    entries = archive_images(config.data)
    split = make_split(config, entries)
    training = split.entries(entries, "train")
    random.Random(0).shuffle(training)
    validation = [e for e in split.entries(entries, "validation") if e.label]
    return training[:TRAINING_SAMPLE], validation


def scored(scores: torch.Tensor, entries: Sequence[ArchiveImage]) -> dict[str, float]:
    metrics = retrieval_metrics(
        scores, [str(e.label) for e in entries], [e.group for e in entries], (10,)
    )
    return {"p10": metrics.precision[10], "map10": metrics.mean_average_precision[10]}


def tensors(entries: Sequence[ArchiveImage], size: int) -> torch.Tensor:
    return torch.stack([image_to_tensor(image, size) for image in load_images(entries)])


def histograms_of(batch: torch.Tensor) -> torch.Tensor:
    """The baseline's RGB histogram of (N, 3, S, S) tensors in [0, 1]."""
    from PIL import Image

    pixels = batch.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    return colour_histograms([Image.fromarray(p) for p in pixels])


def standardised(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (features - reference.mean(0)) / reference.std(0).clamp(min=1e-6)


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    scores = cosine_scores(features)
    count = scores.shape[0]
    return float((scores.sum() - scores.diagonal().sum()) / (count * (count - 1)))


def view_similarity(
    images: torch.Tensor, entries: Sequence[ArchiveImage], augmentation: AugmentationConfig
) -> dict[str, float]:
    """Histogram cosine of two augmented views of one image, against same-class and other-class
    pairs of different groups (all unaugmented)."""
    augment = build_augmentation(augmentation, images.shape[-1])
    torch.manual_seed(0)
    first, second = histograms_of(augment(images)), histograms_of(augment(images))
    views = float(F.cosine_similarity(first, second).mean())
    clean = cosine_scores(histograms_of(images))
    labels = np.array([str(e.label) for e in entries])
    groups = np.array([e.group for e in entries])
    other_group = torch.from_numpy(groups[:, None] != groups[None, :])
    same_class = torch.from_numpy(labels[:, None] == labels[None, :])
    return {
        "two_views": views,
        "same_class_other_group": float(clean[other_group & same_class].mean()),
        "other_class": float(clean[other_group & ~same_class].mean()),
    }


def pq32_of(train: torch.Tensor, validation: torch.Tensor) -> torch.Tensor:
    """Validation descriptors replaced by their 32-bit PQ reconstruction (8 sub-spaces, 16
    codewords each) trained on the training sample: scores as ADC-free symmetric search."""
    dim = train.shape[1]
    padded = (dim + 7) // 8 * 8

    def pad(x: torch.Tensor) -> Any:
        return F.pad(x, (0, padded - dim)).numpy().astype(np.float32)

    quantizer: Any = faiss.ProductQuantizer(padded, 8, 4)
    quantizer.train(pad(train))
    codes = quantizer.compute_codes(pad(validation))
    return torch.from_numpy(quantizer.decode(codes))


def diagnose(plan: DatasetPlan) -> dict[str, Any]:
    training, validation = parts(plan)
    native = NATIVE[plan.name]
    images = tensors(validation, native)
    small = tensors(validation, MODEL_INPUT)
    train_native = tensors(training, native)
    results: dict[str, Any] = {"validation_images": len(validation)}
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "rgb histogram, native": lambda: histograms_of(images),
        f"rgb histogram, {MODEL_INPUT} px": lambda: histograms_of(small),
        "OD mean/std (standardised)": lambda: standardised(
            optical_density_statistics(images), optical_density_statistics(train_native)
        ),
        "OD histogram 6^3": lambda: optical_density_histogram(images, 6),
        "OD histogram 8^3": lambda: optical_density_histogram(images, 8),
        "rgb histogram, 32-bit PQ": lambda: pq32_of(
            histograms_of(train_native), histograms_of(images)
        ),
    }
    for name, describe in methods.items():
        results[name] = scored(cosine_scores(describe()), validation)
    for size in (MODEL_INPUT, native):
        card = ModelCard(input_size=size)
        random_backbone = RandomBackboneDescriptor(card, torch.device("cpu"))
        raw = random_backbone(load_images(validation))
        reference = random_backbone(load_images(training[:200]))
        results[f"random resnet18, {size} px"] = {
            **scored(cosine_scores(raw), validation),
            "mean_pairwise_cosine": mean_pairwise_cosine(raw),
        }
        z = standardised(raw, reference)
        results[f"random resnet18, {size} px, standardised"] = {
            **scored(cosine_scores(z), validation),
            "mean_pairwise_cosine": mean_pairwise_cosine(z),
        }
    results["view similarity, default recipe"] = view_similarity(
        images, validation, AugmentationConfig()
    )
    results["view similarity, colour steps only"] = view_similarity(
        images, validation, AugmentationConfig(min_crop_scale=1.0, dihedral=False, blur_p=0.0)
    )
    results["view similarity, SimCLR colour set"] = view_similarity(
        images, validation, AugmentationConfig.spq_reference()
    )
    results["view similarity, geometry only"] = view_similarity(
        images, validation, AugmentationConfig(hed_p=0.0, colour_p=0.0, blur_p=0.0)
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="+", default=list(PLANS), choices=list(PLANS))
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    results = {name: diagnose(PLANS[name]) for name in args.datasets}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_result(RESULTS / "recipe_diagnosis.json", results)
    for name, rows in results.items():
        print(f"\n## {name} validation ({rows['validation_images']} images)")
        for method, values in rows.items():
            if isinstance(values, dict):
                cells = ", ".join(f"{key} {value:.3f}" for key, value in values.items())
                print(f"- {method}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
