"""Retrieval benchmark: train SPQ on each shared dataset for a stated number of epochs, once per
seed, then evaluate the 32-bit codes, the float descriptor and two baselines on held-out test
groups.

    python -m benchmarks.quality.retrieval [--seeds 0 1 2] [--datasets kather lc25000] [--epochs N]

Budgets are epochs, not minutes, so that a run is the same run on a slower or a busier machine
(the learning-rate schedule follows the budget), and every figure is trained once per seed: two
runs of one setting differ by up to 0.02 P@10, which is as much as the margins the verdict is
about. The seed also draws the split where it is random (LC25000's clusters, IDC's patients), so
there each seed is scored on its own test groups and the baselines with it. The verdict compares
the codes' mean over the seeds with the baselines' mean over the same splits and says in how
many seeds the codes beat both.

Data is read from ``$HISTOSEARCH_SHARED_DATA`` or ``../shared/data`` beside the repository.
Results: ``benchmarks/results/retrieval.json`` and, per dataset and seed, a run folder
(``benchmarks/results/<dataset>/seed-<s>/``) with the model, training curve, evaluation table
and precision@k plot. The run works from the repository root
and names every path relative to it (``../shared/data/...``, ``benchmarks/results/...``), so the
results record no machine's own folders.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    REPO_ROOT,
    RESULTS,
    repository_relative,
    shared_data_root,
    write_result,
)
from indexer.evaluate.run import (
    METHOD_CODES,
    METHOD_FLOAT,
    METHOD_HISTOGRAM,
    evaluate_checkpoint,
    markdown_table,
    write_report,
)
from indexer.learn.config import TrainConfig
from indexer.learn.training import train


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is split and trained. Split choices are documented where they are made."""

    name: str
    folder: str
    epochs: int
    settings: dict[str, Any] = field(default_factory=dict)


# Kather 2016 has 10 source images with uneven class mixes (all of EMPTY lies in 06 and 10,
# most DEBRIS in 04 and 08). The split was chosen from the label counts alone, before any model
# was trained, so that test and validation queries can find their class in another group:
# test = 01, 03, 05, 07 (101 images, 7 classes), validation = 04, 08 (43 images), and the
# remaining 02, 06, 09, 10 (96 images, all 8 classes) train without labels.
# Budget: with 96 training tiles the validation P@10 peaks early (40-110 epochs on a free 2-core
# machine, at the first validations when the cores are shared) and then falls as the network
# memorises the tiles. Epoch budgets are those that 3 minutes (Kather), 6 (LC25000) and 5 (PCam,
# IDC) of training gave on a free 2-core machine at 155-187 images/s (89 at PCam's 96 px), the
# budgets the recipe's settings were chosen under: about 21 minutes a seed there.
# Stain-colour branch: on where it raised validation P@10 in `benchmarks.quality.recipe_sweep`
# (LC25000, IDC; PCam at temperature 0.2: +0.015), off where it did not (Kather: -0.08 and -0.05
# in two seeds). A setting beyond the defaults is taken only where it raised validation P@10 by
# 0.01 or more in runs of equal minutes (benchmarks/results/recipe_sweep_*.json).
KATHER = DatasetPlan(
    name="kather",
    folder="kather2016-texture-240",
    epochs=300,
    settings={
        "validation_groups": ["CRC-Prim-HE-04", "CRC-Prim-HE-08"],
        "test_groups": ["CRC-Prim-HE-01", "CRC-Prim-HE-03", "CRC-Prim-HE-05", "CRC-Prim-HE-07"],
        "validate_every": 5,
    },
)

# LC25000 lung: 740 clusters of two near-duplicate images; a seeded random split of clusters
# (60% train, 10% validation, 30% test) keeps both images of a cluster on the same side.
LC25000 = DatasetPlan(
    name="lc25000",
    folder="lc25000-lung-224px",
    epochs=60,
    settings={
        "validation_fraction": 0.1,
        "test_fraction": 0.3,
        "validate_every": 2,
        # Chosen on validation (benchmarks/results/recipe_sweep.json): +0.034 P@10 of the codes.
        "model": {"stain_descriptor": True},
    },
)

# IDC breast: 150 patients; a seeded random split of patients (15% validation, 30% test).
IDC = DatasetPlan(
    name="idc",
    folder="idc-breast-50px",
    epochs=18,
    settings={
        "validation_fraction": 0.15,
        "test_fraction": 0.3,
        "validate_every": 1,
        # Chosen on validation (benchmarks/results/recipe_sweep.json): +0.033 P@10 of the codes.
        "model": {"stain_descriptor": True},
        # Stain jitter of 0.08 instead of 0.03 (recipe_sweep_jitter_blur.json): +0.019. Smaller
        # crops' floor, no blur and a lower learning rate moved it by under 0.01, and so did
        # the stain branch reading each crop before its colour jitter (recipe_sweep_stain_view
        # .json and docs/model.md: +0.012 in one pair of 5-minute runs, -0.002 in the next).
        "augmentation": {"hed_scale": 0.08, "hed_shift": 0.08},
    },
)

# PCam has two groups only, its train and valid splits, which come from different slides (slide
# ids are not in the files). A test part needs two groups, since a query never counts hits from its
# own group, so `pcam_manifest` re-groups the 6,000 pcam-train tiles with a fixed seed: 1,000 are
# held out for testing beside the 1,000 pcam-valid tiles (every test query searches the other
# split, so each query/hit pair crosses slides), 1,000 validate (two halves of 500 that search
# each other; they may share slides with each other and with training, so validation is
# optimistic: it only ranks checkpoints of one run) and 4,000 train without labels. The held-out
# pcam-train half of the test gallery may share slides with training tiles; pcam-valid never does.
PCAM = DatasetPlan(
    name="pcam",
    folder="pcam-96px-7k",
    epochs=7,
    settings={
        "validation_groups": ["pcam-train-validation-a", "pcam-train-validation-b"],
        "test_groups": ["pcam-valid", "pcam-train-test"],
        "validate_every": 1,
        # The stain branch, chosen on validation (recipe_sweep_pcam_small_tiles.json): +0.015
        # P@10 of the codes at temperature 0.2. PCam's own 96 px instead of 64, at 2.25x the
        # compute per tile: best validation P@10 0.660-0.683 in five 5-minute runs at 96 px
        # (curves still rising at the end), 0.657 and 0.660 at 64 px (peaks at the first
        # epoch); recipe_sweep_pcam_input_size.json holds one pair, docs/model.md the rest.
        "model": {"stain_descriptor": True, "input_size": 96},
    },
)
PCAM_TEST_TILES = 1000
PCAM_VALIDATION_TILES = 1000

# breakhis-400x-8 is not benchmarked: 8 images of 7 patients leave no training set and at most a
# handful of queries, whose P@10 could not exceed 0.1 with 8 images in all.
NOT_BENCHMARKED = {
    "breakhis-400x-8": "8 images of 7 patients: too few to train on or to measure P@10 on"
}

PLANS = {plan.name: plan for plan in (KATHER, LC25000, PCAM, IDC)}

# The figures above were trained in bfloat16 mixed precision. `--precision auto` takes float32 on
# a CPU without AMX units, where it is faster (benchmarks/quality/precision.py), so the benchmark
# names its precision: a seed's run is then the same run on any machine.
RECIPE_PRECISION: dict[str, Any] = {"precision": "bf16"}


def pcam_manifest(source: Path, out: Path, seed: int = 0) -> Path:
    """Write ``manifest.csv`` in ``out``: PCam's labels.csv with pcam-train re-grouped (see `PCAM`).
    Paths are written relative to ``out``, where the CSV loader resolves them."""
    with (source / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [row for row in rows if row["group"] == "pcam-train"]
    random.Random(seed).shuffle(train_rows)
    cut_test, cut_validation = PCAM_TEST_TILES, PCAM_TEST_TILES + PCAM_VALIDATION_TILES
    for position, row in enumerate(train_rows):
        if position < cut_test:
            row["group"] = "pcam-train-test"
        elif position < cut_validation:
            half = "a" if (position - cut_test) % 2 == 0 else "b"
            row["group"] = f"pcam-train-validation-{half}"
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        for row in rows:
            relative = os.path.relpath(os.path.abspath(source / row["path"]), os.path.abspath(out))
            writer.writerow({"path": relative, "label": row["label"], "group": row["group"]})
    return manifest


def plan_data(plan: DatasetPlan, out: Path) -> Path:
    """The archive a plan trains and evaluates on: the shared folder, or PCam's manifest."""
    folder = shared_data_root() / plan.folder
    if plan.name == PCAM.name:
        return repository_relative(pcam_manifest(folder, out))
    return repository_relative(folder)


DEFAULT_SEEDS = (0, 1, 2)


def run_dataset(
    plan: DatasetPlan,
    seeds: Sequence[int],
    epochs: int | None,
    threads: int | None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Train and evaluate ``plan`` once per seed; the verdict is over the seeds' mean."""
    data = plan_data(plan, repository_relative(RESULTS / plan.name))
    budget = plan.epochs if epochs is None else epochs
    runs = [run_seed(plan, data, seed, budget, threads, reuse) for seed in seeds]
    return {
        "dataset": plan.folder,
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "epochs": budget,
        "seeds": list(seeds),
        "runs": runs,
        "verdict": verdict_over_seeds([run["verdict"] for run in runs]),
    }


def run_seed(
    plan: DatasetPlan, data: Path, seed: int, epochs: int, threads: int | None, reuse: bool
) -> dict[str, Any]:
    out = repository_relative(RESULTS / plan.name / f"seed-{seed}")
    config = TrainConfig(
        data=str(data),
        out=str(out),
        threads=threads,
        **{**RECIPE_PRECISION, **plan.settings, "epochs": epochs, "seed": seed},
    )
    checkpoint, training_wall_s, reused = trained_checkpoint(config, reuse)
    report = evaluate_checkpoint(checkpoint, data, part="test")
    write_report(report, out)
    history = json.loads((out / "history.json").read_text())
    resolved = json.loads((out / "config.json").read_text())
    return {
        "seed": seed,
        "training": {
            "epochs": len(history),
            "wall_seconds": training_wall_s,
            "reused_run_folder": reused,
            "device": resolved["device"],
            "compute_dtype": resolved["compute_dtype"],
            # Absent from run folders written before training recorded it.
            "cpu": resolved.get("cpu"),
            "torch_threads": torch.get_num_threads(),
            "train_images_per_second": _median([row["images_per_s"] for row in history]),
            "config": config.model_dump(mode="json"),
        },
        "evaluation": report.as_dict(),
        "verdict": verdict(report.as_dict()),
        "table": markdown_table(report),
    }


def trained_checkpoint(config: TrainConfig, reuse: bool) -> tuple[Path, float, bool]:
    """Train ``config`` and return its checkpoint, the training seconds and False; with
    ``reuse``, a run folder whose finished run had exactly this config is evaluated as it is
    (training is deterministic per seed, so it is the model this call would train) and its
    recorded training seconds are returned with True."""
    recorded = recorded_training_seconds(config) if reuse else None
    if recorded is not None:
        return Path(config.out) / "model.pt", recorded, True
    started = time.perf_counter()
    checkpoint = train(config)
    return checkpoint, time.perf_counter() - started, False


def recorded_training_seconds(config: TrainConfig) -> float | None:
    """The training seconds of a finished run of exactly ``config`` in ``config.out``, or None.
    The trainer writes model.pt and then history.json only when the run ends, so a history that
    reached the last epoch and is not older than model.pt belongs to it."""
    out = Path(config.out)
    files = [out / name for name in ("config.json", "model.pt", "history.json")]
    if not all(path.is_file() for path in files):
        return None
    recorded, model, history = files
    if json.loads(recorded.read_text())["config"] != config.model_dump(mode="json"):
        return None
    epochs = json.loads(history.read_text())
    reached_the_end = bool(epochs) and epochs[-1]["epoch"] == config.epochs
    if not reached_the_end or history.stat().st_mtime < model.stat().st_mtime:
        return None
    return float(epochs[-1]["elapsed_s"])


def verdict(evaluation: dict[str, Any]) -> dict[str, Any]:
    """P@10 and mAP@10 of the codes, the float descriptor and the two baselines, and whether the
    codes beat BOTH baselines on both figures."""
    methods = {method["name"]: method for method in evaluation["methods"]}
    backbone = next(name for name in methods if name.startswith("random "))
    rows = {
        "SPQ codes": methods[METHOD_CODES],
        "SPQ float": methods[METHOD_FLOAT],
        "colour histogram": methods[METHOD_HISTOGRAM],
        "random-weights backbone": methods[backbone],
    }
    figures = {
        name: {"p10": row["precision_at"]["10"], "map10": row["map_at"]["10"]}
        for name, row in rows.items()
    }
    codes = figures["SPQ codes"]
    baselines = [figures["colour histogram"], figures["random-weights backbone"]]
    beats = all(codes[key] > baseline[key] for baseline in baselines for key in ("p10", "map10"))
    return {"figures": figures, "codes_beat_both_baselines": beats}


METHOD_ROWS = ("SPQ codes", "SPQ float", "colour histogram", "random-weights backbone")
FIGURES = ("p10", "map10")


def verdict_over_seeds(verdicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each method's mean, lowest and highest figure over the seeds, whether the codes' means beat
    both baselines' means on both figures, and in how many seeds the codes beat both."""
    figures = {
        method: {key: _spread([one["figures"][method][key] for one in verdicts]) for key in FIGURES}
        for method in METHOD_ROWS
    }
    codes = figures["SPQ codes"]
    baselines = [figures["colour histogram"], figures["random-weights backbone"]]
    beats = all(
        codes[key]["mean"] > baseline[key]["mean"] for baseline in baselines for key in FIGURES
    )
    return {
        "figures": figures,
        "codes_beat_both_baselines": beats,
        "seeds_beating_both": sum(one["codes_beat_both_baselines"] for one in verdicts),
        "seeds": len(verdicts),
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per dataset: each method's mean P@10 / mAP@10 over the seeds on the test groups
    (the codes' lowest and highest beside it), and the verdict."""
    header = " | ".join(f"{name} P@10 / mAP@10" for name in METHOD_ROWS)
    lines = [
        f"| dataset | {header} | codes beat both (seeds) |",
        "|---|" + "---|" * (len(METHOD_ROWS) + 1),
    ]
    for result in results.values():
        outcome = result["verdict"]
        cells = [_cell(outcome["figures"][name], name == "SPQ codes") for name in METHOD_ROWS]
        passed = "yes" if outcome["codes_beat_both_baselines"] else "NO"
        seeds = f"{outcome['seeds_beating_both']} of {outcome['seeds']}"
        lines.append(f"| {result['dataset']} | " + " | ".join(cells) + f" | {passed} ({seeds}) |")
    for folder, reason in NOT_BENCHMARKED.items():
        lines.append(f"| {folder} | not benchmarked: {reason} |" + " |" * len(METHOD_ROWS))
    return "\n".join(lines)


def _cell(figures: dict[str, dict[str, float]], with_range: bool) -> str:
    cell = f"{figures['p10']['mean']:.3f} / {figures['map10']['mean']:.3f}"
    if with_range:
        low, high = figures["p10"]["min"], figures["p10"]["max"]
        cell += f" (P@10 {low:.3f}-{high:.3f})"
    return cell


def training_minutes(results: dict[str, Any]) -> float:
    seconds = sum(run["training"]["wall_seconds"] for r in results.values() for run in r["runs"])
    return float(seconds) / 60


def earlier_results(exclude: dict[str, Any]) -> dict[str, Any]:
    """The datasets of the last ``retrieval.json`` that this run did not measure, so that
    re-measuring one dataset keeps the others' figures (each says when it was measured)."""
    path = RESULTS / "retrieval.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text()).get("datasets", {})
    return {name: result for name, result in earlier.items() if name not in exclude}


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--datasets", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="train each dataset once per seed (default: 0 1 2)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="training epochs for every dataset chosen, for a quick look (default: each "
        + "dataset's own: "
        + ", ".join(f"{plan.name} {plan.epochs}" for plan in PLANS.values())
        + ")",
    )
    # On a machine shared with other jobs, pass --threads 1: torch threads without a free core
    # each spin-wait at every parallel region and train several times slower.
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate a seed's run folder as it is where its finished run had exactly the "
        "config this run would train (training is deterministic per seed), instead of "
        "training it again",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Relative paths in the results (see the module doc) name files from here.
    os.chdir(REPO_ROOT)
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = {
        name: run_dataset(PLANS[name], args.seeds, args.epochs, args.threads, args.reuse)
        for name in args.datasets
    }
    every = {**earlier_results(exclude=measured), **measured}
    results = {name: every[name] for name in PLANS if name in every}
    total_minutes = training_minutes(results)
    this_run_minutes = training_minutes(measured)
    write_result(
        RESULTS / "retrieval.json",
        {
            "total_training_minutes": total_minutes,
            "datasets": results,
            "summary": summary_table(results),
            "not_benchmarked": NOT_BENCHMARKED,
        },
    )
    for name, result in measured.items():
        for run in result["runs"]:
            training = run["training"]
            print(
                f"\n## {name}, seed {run['seed']}: trained {training['wall_seconds'] / 60:.1f} "
                f"min, {training['epochs']} epochs, {training['train_images_per_second']:.0f} "
                f"images/s ({training['device']}, {training['compute_dtype']}, "
                f"{training['torch_threads']} threads)"
            )
            print(run["table"])
    print(f"\n## Test groups, 32-bit codes, mean over seeds {' '.join(map(str, args.seeds))}")
    print(summary_table(results))
    print(
        f"training time: {this_run_minutes:.1f} min in this run, "
        f"{total_minutes:.1f} min for all the figures above"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
