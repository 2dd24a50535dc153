"""What the recipe's network reaches WITH labels: the ceiling self-supervised training is under.

    nice python -m benchmarks.quality.supervised_ceiling [--datasets pcam idc] [--epochs N] \
        [--threads 2]
    nice python -m benchmarks.quality.supervised_ceiling --datasets idc --input-size 96 \
        --out benchmarks/results/supervised_ceiling_idc_96px.json
    nice python -m benchmarks.quality.supervised_ceiling --datasets idc --input-size 96 \
        --stages 2 3 4 \
        --out benchmarks/results/supervised_ceiling_idc_96px_stage4.json

The from-scratch SPQ recipe sits at the colour histogram's level on most shared sets. Either the
contrastive objective fails to find what separates the classes, or the network and its CPU budget
(a ResNet-18 trunk to stage 3 at 64-96 px, a few epochs) cannot hold more than colour. This
benchmark tells the two apart. It trains the recipe's own network
(`benchmarks.quality.retrieval.PLANS`: same trunk, input size, stain branch, augmentations, batch,
epochs, learning rate) WITH the training groups' class labels: one augmented view per image, a
linear classifier on the descriptor, cross-entropy. Validation P@10 of the float descriptor picks
the checkpoint, exactly as in self-supervised training; the codebooks are then fitted to its
training descriptors by k-means and the 32-bit codes scored too. Only training and validation groups
are read; the test groups never are. The RGB colour histogram (the baseline, at native size) is
scored on the same validation images.

If the labelled network stays near the histogram, no self-supervised objective will lift this
network past it in this budget, and the lever is the network or the budget; if it goes well past
it, the objective is what falls short.

Results: a table on stdout and ``benchmarks/results/supervised_ceiling.json``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, write_result
from benchmarks.quality.recipe_diagnosis import scored
from benchmarks.quality.retrieval import PLANS, DatasetPlan, plan_data
from indexer.evaluate.baselines import colour_histograms
from indexer.evaluate.metrics import load_images
from indexer.ingest.sources import ArchiveImage
from indexer.learn.config import TrainConfig
from indexer.learn.training import (
    Trainer,
    archive_images,
    validate,
    validation_in_tie_neutral_order,
)


def training_labels(
    trainer: Trainer, entries: Sequence[ArchiveImage]
) -> tuple[torch.Tensor, list[str]]:
    """Class indices of the training images, in the order of ``trainer.train_images``."""
    training = trainer.split.entries(entries, "train")
    if any(entry.label is None for entry in training):
        raise ValueError("every training image needs a label for the supervised ceiling")
    names = [str(entry.label) for entry in training]
    classes = sorted(set(names))
    return torch.tensor([classes.index(name) for name in names]), classes


def histogram_p10(trainer: Trainer, entries: Sequence[ArchiveImage]) -> float:
    """The colour histogram's validation P@10 at native size, on the validation images in the
    order training ranks them."""
    validation = validation_in_tie_neutral_order(
        [e for e in trainer.split.entries(entries, "validation") if e.label]
    )
    histograms = colour_histograms(list(load_images(validation)))
    return scored(histograms @ histograms.T, validation)["p10"]


def supervised_epoch(
    trainer: Trainer,
    classifier: torch.nn.Linear,
    optimizer: torch.optim.Optimizer,
    labels: torch.Tensor,
) -> float:
    """One pass over the training images, one augmented view each; the mean cross-entropy."""
    count = trainer.train_images.shape[0]
    batch_size = trainer.config.batch_size
    order = torch.randperm(count)
    losses = []
    for start in range(0, count - batch_size + 1, batch_size):
        chosen = order[start : start + batch_size]
        images = trainer.train_images[chosen].to(trainer.device).float().div_(255)
        descriptors = trainer.model.encode(*trainer.augmented_view(images))
        targets = labels[chosen].to(trainer.device)
        loss: torch.Tensor = F.cross_entropy(classifier(descriptors), targets)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


def ceiling_of(plan: DatasetPlan, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    epochs = args.epochs or plan.epochs
    model_settings = dict(plan.settings.get("model", {}))
    if args.input_size:
        model_settings["input_size"] = args.input_size
    if args.stages:
        model_settings["stages"] = args.stages
    config = TrainConfig(
        data=str(plan_data(plan, RESULTS / plan.name)),
        out=str(scratch / plan.name),
        threads=args.threads,
        precision="fp32",
        **{**plan.settings, "epochs": epochs, "seed": args.seed, "model": model_settings},
    )
    trainer = Trainer(config)
    assert trainer.validation is not None, "the benchmark's plans all have validation groups"
    entries = archive_images(config.data)
    labels, classes = training_labels(trainer, entries)
    dimension = trainer.model.card.num_codebooks * trainer.model.card.codeword_dim
    classifier = torch.nn.Linear(dimension, len(classes)).to(trainer.device)
    parameters = list(trainer.model.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    history: list[dict[str, Any]] = []
    best, best_epoch, best_state = -1.0, 0, None
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        trainer.model.train()
        loss = supervised_epoch(trainer, classifier, optimizer, labels)
        row: dict[str, Any] = {"epoch": epoch, "cross_entropy": loss}
        if epoch % config.validate_every == 0 or epoch == epochs:
            row["val_p10_float"] = validate(trainer.model, trainer.validation, trainer.device)[
                "val_p10_float"
            ]
            if row["val_p10_float"] > best:
                best, best_epoch = row["val_p10_float"], epoch
                best_state = copy.deepcopy(trainer.model.state_dict())
        history.append(row)
        print(f"{plan.name} epoch {epoch}/{epochs}: {row}", flush=True)
    assert best_state is not None
    trainer.model.load_state_dict(best_state)
    trainer.model.quantizer.fit_codewords(trainer.training_descriptors().to(trainer.device))
    chosen = validate(trainer.model, trainer.validation, trainer.device)
    return {
        "dataset": plan.folder,
        "epochs": epochs,
        "input_size": config.model.input_size,
        "train_images": int(trainer.train_images.shape[0]),
        "validation_images": len(trainer.validation.labels),
        "classes": classes,
        "minutes": (time.monotonic() - started) / 60,
        "best_epoch": best_epoch,
        "val_p10_float": chosen["val_p10_float"],
        "val_p10_codes": chosen["val_p10_codes"],
        "val_p10_colour_histogram": histogram_p10(trainer, entries),
        "history": history,
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| set | epochs (best) | labelled float P@10 | labelled 32-bit codes P@10 | "
        "colour histogram P@10 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['epochs']} ({row['best_epoch']}) | "
            f"{row['val_p10_float']:.3f} | {row['val_p10_codes']:.3f} | "
            f"{row['val_p10_colour_histogram']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Validation P@10 of the recipe's network trained WITH class labels, against "
        "the colour histogram: the ceiling self-supervised training is under.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(PLANS), default=sorted(PLANS))
    parser.add_argument(
        "--epochs", type=int, help="epochs for every set (default: each plan's own budget)"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help="network input side in pixels for every set (default: each plan's own): what a "
        "larger input would buy, at its compute",
    )
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        choices=(1, 2, 3, 4),
        help="backbone stages pooled into the descriptor, for every set (default: the plan's, "
        "2 and 3); a deeper last stage builds a deeper trunk",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "supervised_ceiling.json", help="the JSON file"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="histosearch-ceiling-"))
    rows = []
    try:
        for name in args.datasets:
            rows.append(ceiling_of(PLANS[name], args, scratch))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_result(args.out, {"seed": args.seed, "rows": rows})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
