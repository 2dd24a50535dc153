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
import csv
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
# Budget: with 96 training tiles the validation P@10 peaks early (40-110 epochs on a free 2-core
# machine, at the first validations when the cores are shared) and then falls as the network
# memorises the tiles; Kather gets 3 minutes, LC25000 6, PCam and IDC 5 (19 minutes in all).
# Stain-colour branch: on where it raised validation P@10 in `benchmarks.recipe_sweep` (LC25000,
# IDC; PCam at temperature 0.2: +0.015), off where it did not (Kather: -0.08 and -0.05 in two
# seeds). A setting beyond the defaults is taken only where it raised validation P@10 by 0.01 or
# more in runs of equal minutes (benchmarks/results/recipe_sweep_*.json).
KATHER = DatasetPlan(
    name="kather",
    folder="kather2016-texture-240",
    minutes=3.0,
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
    minutes=6.0,
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
    minutes=5.0,
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
    minutes=5.0,
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


def pcam_manifest(source: Path, out: Path, seed: int = 0) -> Path:
    """Write ``out/manifest.csv``: PCam's labels.csv with pcam-train re-grouped (see `PCAM`).
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


COMMON_SETTINGS: dict[str, Any] = {"epochs": 10_000, "seed": 0}


def run_dataset(plan: DatasetPlan, minutes: float | None, threads: int | None) -> dict[str, Any]:
    minutes = plan.minutes if minutes is None else minutes
    out = repository_relative(RESULTS / plan.name)
    data = plan_data(plan, out)
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
        "verdict": verdict(report.as_dict()),
        "table": markdown_table(report),
    }


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


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per dataset: P@10 / mAP@10 of each method on the test groups, and the verdict."""
    names = ["SPQ codes", "SPQ float", "colour histogram", "random-weights backbone"]
    header = " | ".join(f"{name} P@10 / mAP@10" for name in names)
    lines = [
        f"| dataset | {header} | codes beat both |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for result in results.values():
        figures = result["verdict"]["figures"]
        cells = [f"{figures[n]['p10']:.3f} / {figures[n]['map10']:.3f}" for n in names]
        passed = "yes" if result["verdict"]["codes_beat_both_baselines"] else "NO"
        lines.append(f"| {result['dataset']} | " + " | ".join(cells) + f" | {passed} |")
    for folder, reason in NOT_BENCHMARKED.items():
        lines.append(f"| {folder} | not benchmarked: {reason} |" + " |" * len(names))
    return "\n".join(lines)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument(
        "--minutes",
        type=float,
        help="training budget per dataset in minutes (default: Kather 3, LC25000 6, PCam 5, IDC 5)",
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
        json.dumps(
            {
                "total_training_minutes": total_minutes,
                "datasets": results,
                "summary": summary_table(results),
                "not_benchmarked": NOT_BENCHMARKED,
            },
            indent=2,
        )
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
    print("\n## Test groups, 32-bit codes: P@10 / mAP@10")
    print(summary_table(results))
    print(f"total training time: {total_minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
