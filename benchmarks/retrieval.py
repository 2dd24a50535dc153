"""Retrieval benchmark: train SPQ on each shared dataset within a stated budget, then evaluate
the 32-bit codes, the float descriptor and two baselines on held-out test groups.

    python -m benchmarks.retrieval [--minutes M] [--datasets kather lc25000]

Data is read from ``$HISTOSEARCH_SHARED_DATA`` or ``../shared/data`` beside the repository.
Results: ``benchmarks/results/retrieval.json`` and, per dataset, a run folder with the model,
training curve, evaluation table and precision@k plot. The run works from the repository root
and names every path relative to it (``../shared/data/...``, ``benchmarks/results/...``), so the
results record no machine's own folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from indexer.evaluate.run import evaluate_checkpoint, markdown_table, write_report
from indexer.learn.config import TrainConfig
from indexer.learn.training import train

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"


def shared_data_root() -> Path:
    override = os.environ.get("HISTOSEARCH_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def repository_relative(path: Path) -> Path:
    """``path`` relative to the repository root, which the benchmark runs from (not resolved:
    ``../shared`` may be a link, and the relative name is what another checkout has too)."""
    return Path(os.path.relpath(os.path.abspath(path), REPO_ROOT))


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is split and trained. Split choices are documented where they are made."""

    name: str
    folder: str
    minutes: float
    settings: dict[str, Any] = field(default_factory=dict)


# Kather 2016 has 10 source images with uneven class mixes (all of EMPTY lies in 06 and 10,
# most DEBRIS in 04 and 08). The split was chosen from the label counts alone, before any model
# was trained, so that test and validation queries can find their class in another group:
# test = 01, 03, 05, 07 (101 images, 7 classes), validation = 04, 08 (43 images), and the
# remaining 02, 06, 09, 10 (96 images, all 8 classes) train without labels.
# Budget: with 96 training tiles the validation curve flattens after about 50-100 epochs (about a
# minute at bfloat16 on two cores); Kather gets 4 minutes and LC25000, whose validation P@10 was
# still rising after 6 minutes, gets 15 (19 minutes in all, under the 20-minute budget).
KATHER = DatasetPlan(
    name="kather",
    folder="kather2016-texture-240",
    minutes=4.0,
    settings={
        "validation_groups": ["CRC-Prim-HE-04", "CRC-Prim-HE-08"],
        "test_groups": ["CRC-Prim-HE-01", "CRC-Prim-HE-03", "CRC-Prim-HE-05", "CRC-Prim-HE-07"],
        "validate_every": 10,
    },
)

# LC25000 lung: 740 clusters of two near-duplicate images; a seeded random split of clusters
# (60% train, 10% validation, 30% test) keeps both images of a cluster on the same side.
LC25000 = DatasetPlan(
    name="lc25000",
    folder="lc25000-lung-224px",
    minutes=15.0,
    settings={
        "validation_fraction": 0.1,
        "test_fraction": 0.3,
        "validate_every": 2,
    },
)

PLANS = {plan.name: plan for plan in (KATHER, LC25000)}
COMMON_SETTINGS: dict[str, Any] = {"epochs": 10_000, "seed": 0}


def run_dataset(plan: DatasetPlan, minutes: float | None, threads: int | None) -> dict[str, Any]:
    minutes = plan.minutes if minutes is None else minutes
    out = repository_relative(RESULTS / plan.name)
    data = repository_relative(shared_data_root() / plan.folder)
    config = TrainConfig(
        data=str(data),
        out=str(out),
        minutes=minutes,
        threads=threads,
        **{**COMMON_SETTINGS, **plan.settings},
    )
    started = time.perf_counter()
    checkpoint = train(config)
    training_wall_s = time.perf_counter() - started
    report = evaluate_checkpoint(checkpoint, data, part="test")
    write_report(report, out)
    history = json.loads((out / "history.json").read_text())
    resolved = json.loads((out / "config.json").read_text())
    return {
        "dataset": plan.folder,
        "training": {
            "budget_minutes": minutes,
            "wall_seconds": training_wall_s,
            "epochs": len(history),
            "device": resolved["device"],
            "compute_dtype": resolved["compute_dtype"],
            "torch_threads": torch.get_num_threads(),
            "train_images_per_second": _median([row["images_per_s"] for row in history]),
            "config": config.model_dump(mode="json"),
        },
        "evaluation": report.as_dict(),
        "table": markdown_table(report),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument(
        "--minutes",
        type=float,
        help="training budget per dataset in minutes (default: 4 for Kather, 15 for LC25000)",
    )
    # On a machine shared with other jobs, pass --threads 1: torch threads without a free core
    # each spin-wait at every parallel region and train several times slower.
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Relative paths in the results (see the module doc) name files from here.
    os.chdir(REPO_ROOT)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: run_dataset(PLANS[name], args.minutes, args.threads) for name in args.datasets}
    total_minutes = sum(r["training"]["wall_seconds"] for r in results.values()) / 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(
        json.dumps({"total_training_minutes": total_minutes, "datasets": results}, indent=2)
    )
    for name, result in results.items():
        training = result["training"]
        print(
            f"\n## {name}: trained {training['wall_seconds'] / 60:.1f} min, "
            f"{training['epochs']} epochs, {training['train_images_per_second']:.0f} images/s "
            f"({training['device']}, {training['compute_dtype']}, "
            f"{training['torch_threads']} threads)"
        )
        print(result["table"])
    print(f"total training time: {total_minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
