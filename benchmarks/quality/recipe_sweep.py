"""Recipe variants compared on VALIDATION groups only: short runs, best validation P@10 per run.

    python -m benchmarks.quality.recipe_sweep [--minutes 1.5] [--datasets ...] [--variants ...]

Each variant trains on the retrieval benchmark's split (`benchmarks.quality.retrieval.PLANS`)
for the same number of minutes, one after another in this process; the figure is the best validation
P@10 of the codes (and the float descriptor's at that point), which is how the shipped recipe is
chosen. Test groups are never read. Results: ``benchmarks/results/recipe_sweep.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, RESULTS, write_result
from benchmarks.quality.retrieval import PLANS, RECIPE_PRECISION, plan_data
from indexer.learn.config import TrainConfig
from indexer.learn.training import train

# Each variant: settings on top of the benchmark plan's (nested model / augmentation settings
# as dicts, merged into the plan's: see `with_variant`).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "temperature 0.5": {"temperature": 0.5},
    "stain branch": {"model": {"stain_descriptor": True}},
    "stain branch, no colour jitter": {
        "model": {"stain_descriptor": True},
        "augmentation": {"colour_p": 0.0},
    },
    "batch 128": {"batch_size": 128},
    "temperature 0.2": {"temperature": 0.2},
    "temperature 0.1": {"temperature": 0.1},
    "temperature 0.2, crop 0.5": {"temperature": 0.2, "augmentation": {"min_crop_scale": 0.5}},
    "temperature 0.2, lr 3e-4": {"temperature": 0.2, "learning_rate": 3e-4},
    "temperature 0.2, stain branch": {"temperature": 0.2, "model": {"stain_descriptor": True}},
    "temperature 0.2, stain jitter 0.08": {
        "temperature": 0.2,
        "augmentation": {"hed_scale": 0.08, "hed_shift": 0.08},
    },
    "temperature 0.2, no blur": {"temperature": 0.2, "augmentation": {"blur_p": 0.0}},
    "temperature 0.2, stain branch, 96 px": {
        "temperature": 0.2,
        "model": {"stain_descriptor": True, "input_size": 96},
    },
    "stain view geometric": {"augmentation": {"stain_branch_view": "geometric"}},
    "stain view augmented": {"augmentation": {"stain_branch_view": "augmented"}},
    "64 px": {"model": {"input_size": 64}},
    "96 px": {"model": {"input_size": 96}},
    "96 px, stain view geometric": {
        "model": {"input_size": 96},
        "augmentation": {"stain_branch_view": "geometric"},
    },
    "neighbours 1024, half": {"neighbour_support": 1024, "neighbour_weight": 0.5},
    "neighbours 1024, only": {"neighbour_support": 1024, "neighbour_weight": 1.0},
    "regnetx-002, fp32": {"model": {"backbone": "timm:regnetx_002"}, "precision": "fp32"},
    "twice the epochs, fp32": {"epochs": 36, "precision": "fp32"},
    "twice PCam's epochs, fp32": {"epochs": 14, "precision": "fp32"},
}

# Variants are compared in runs of equal minutes: the epoch cap is never what ends a run.
UNTIL_THE_MINUTES: dict[str, Any] = {"epochs": 10_000}


def with_variant(settings: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The plan's settings with a variant's on top; nested settings (model, augmentation) are
    merged key by key, so that a variant changes only what it names."""
    merged = dict(settings)
    for key, value in variant.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if nested else value
    return merged


def run_variant(
    dataset: str, variant: str, minutes: float | None, threads: int, seed: int = 0
) -> dict[str, Any]:
    """One run of a variant: ``minutes`` long, or without minutes the plan's epoch budget (the
    retrieval benchmark's, so that its runs of the same seed are the variant's reference)."""
    plan = PLANS[dataset]
    out = RESULTS / "recipe_sweep" / dataset / variant.replace(" ", "-").replace(",", "")
    budget = UNTIL_THE_MINUTES if minutes is not None else {"epochs": plan.epochs}
    config = TrainConfig(
        data=str(plan_data(plan, RESULTS / plan.name)),
        out=str(out),
        minutes=minutes,
        threads=threads,
        **with_variant(
            {**RECIPE_PRECISION, **budget, "seed": seed, **plan.settings}, VARIANTS[variant]
        ),
    )
    train(config)
    history = json.loads((out / "history.json").read_text())
    validated = [row for row in history if "val_p10_codes" in row]
    best = max(validated, key=lambda row: row["val_p10_codes"])
    # Only the figures are kept: the run folder (weights) is not a result.
    shutil.rmtree(out)
    return {
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "val_p10_codes": best["val_p10_codes"],
        "val_p10_float": best["val_p10_float"],
        "code_perplexity": best["code_perplexity"],
        "codewords_used": best["codewords_used"],
        "last_val_p10_codes": validated[-1]["val_p10_codes"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=1.5, help="training minutes per run")
    parser.add_argument(
        "--plan-epochs",
        action="store_true",
        help="train each run for the retrieval benchmark's epochs of its set instead of minutes",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of each run")
    parser.add_argument(
        "--results", default="recipe_sweep.json", help="file name under benchmarks/results"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.chdir(REPO_ROOT)
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, Any]] = {}
    target = RESULTS / args.results
    minutes = None if args.plan_epochs else args.minutes
    budget = {"epochs": "the plan's"} if args.plan_epochs else {"minutes": args.minutes}
    for dataset, seed, variant in itertools.product(args.datasets, args.seeds, args.variants):
        row = run_variant(dataset, variant, minutes, args.threads, seed)
        results.setdefault(dataset, {})[f"{variant}, seed {seed}"] = row
        print(
            f"{dataset:8s} {variant:32s} seed {seed} val P@10 codes {row['val_p10_codes']:.3f} "
            f"float "
            f"{row['val_p10_float']:.3f} (epoch {row['best_epoch']} of {row['epochs']}, "
            f"perplexity {row['code_perplexity']:.1f}, last {row['last_val_p10_codes']:.3f})",
            flush=True,
        )
        write_result(target, {**budget, "runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
