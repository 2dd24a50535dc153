"""How much of a frozen backbone's own retrieval quality 32- and 64-bit codes keep.

    nice python -m benchmarks.quality.backbones --quality [--weights FILE] \
        [--spq-checkpoint DATA=FILE]

For every dataset and frozen backbone: ``--cached-views`` training of the SPQ head (views encoded
once through the frozen trunk, head trained on pairs of cached views, checkpoint chosen on the
validation groups' code P@10), then on the test groups, never seen in training or selection:
P@10 of the backbone's own float features (the ceiling row of ``histosearch evaluate``: class
token, or mean of the last feature map), P@10 of the codes searched through an `ArchiveIndex`
with the query's group excluded (the shipped search path), and the codes' share of the ceiling
(retention). Goals: >= 95% at 64 bits, >= 90% at 32 bits. An RGB colour histogram on the same
test groups is the simple baseline.

Rows: a random timm ViT-S/16 (token path, 224 px), a random ResNet-18, ResNet-18 trunks given by
``--weights`` (a ResNet-18 file in torchvision's key layout, e.g. ImageNet weights you downloaded,
or a histosearch checkpoint whose trunk is used), and per dataset the project's own from-scratch
SPQ trunk (``--spq-checkpoint DATASET=model.pt``, trained on that dataset's training groups of the
same seeded split). Nothing is downloaded. The random backbones are seeded, so a rerun builds the
same trunks and reuses their view caches (``--cache-dir``).

Results: a table on stdout and ``benchmarks/results/backbone_quality.json``, with the cache's cost
(images x views, forward seconds) and the head-training time of each run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, RESULTS, shared_data_root, write_result
from indexer.evaluate.baselines import colour_histograms
from indexer.evaluate.metrics import cosine_scores, describe_in_batches, score_method
from indexer.evaluate.run import ceiling_features, code_search_result, entries_of_part
from indexer.learn.config import TrainConfig
from indexer.learn.training import (
    Trainer,
    ValidationSet,
    archive_images,
    embed_validation,
    frozen_backbone_output,
    load_tensor_set,
    make_split,
)
from indexer.learn.view_cache import BackboneOutput, trunk_digest
from model import ModelSpec, SPQModel, load_checkpoint, read_checkpoint
from model.card import code_geometry

DATA_ROOT = shared_data_root()
DATASETS = ("kather2016-texture-240", "lc25000-lung-224px")
# Views per training image: Kather's 130 training tiles afford more than LC25000's 800.
VIEWS = {"kather2016-texture-240": 8, "lc25000-lung-224px": 4}
GOALS = {32: 0.90, 64: 0.95}
K = 10
DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class FrozenBackbone:
    """One row: a backbone architecture, its weights and the geometry it is fed at."""

    name: str
    backbone: str
    weights: str  # what the trunk's weights are, in words
    weights_file: Path | None = None
    input_size: int | None = None  # None: the backbone's own (224 for a timm ViT-S/16)
    stages: tuple[int, ...] | None = None

    def spec(self, bits: int) -> ModelSpec:
        settings: dict[str, Any] = {
            "backbone": self.backbone,
            "freeze_backbone": True,
            "num_codebooks": code_geometry(bits),
        }
        if self.input_size is not None:
            settings["input_size"] = self.input_size
        if self.stages is not None:
            settings["stages"] = list(self.stages)
        return ModelSpec(**settings)


@dataclass
class RunResult:
    bits: int
    codes_p10: float
    float_descriptor_p10: float
    retention: float
    passed: bool
    best_validation_p10: float
    epochs: int
    head_training_s: float  # wall time of the training loop after the cache, validation included
    step_s: float  # of which in training steps


@dataclass
class RowResult:
    dataset: str
    row: str
    backbone: str
    weights: str
    input_size: int
    test_images: int
    test_groups: int
    float_p10: float
    histogram_p10: float
    cache: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)


def repository_relative_cache(cost: dict[str, Any]) -> dict[str, Any]:
    """The cache's cost with its folder named relative to the repository, as every other path in
    the results is (the absolute name is one machine's)."""
    folder = os.path.relpath(os.path.abspath(cost["folder"]), REPO_ROOT)
    return {**cost, "folder": folder}


def export_spq_trunk(checkpoint: Path, out: Path) -> tuple[Path, ModelSpec]:
    """A histosearch ResNet checkpoint's trunk as a torchvision-layout weights file (the layout
    ``--backbone-weights`` reads), with the model settings it was trained at."""
    payload = read_checkpoint(checkpoint)
    card = ModelSpec.model_validate(
        {name: payload["card"][name] for name in ModelSpec.model_fields if name in payload["card"]}
    )
    if not card.backbone.startswith("resnet") or card.small_input_stem:
        raise SystemExit(f"{checkpoint}: only ResNet trunks with the standard stem are exported")
    renamed = {"trunk.stem.0.": "conv1.", "trunk.stem.1.": "bn1."}
    renamed |= {f"trunk.stages.{index}.": f"layer{index + 1}." for index in range(4)}
    state = {}
    for key, tensor in payload["state_dict"].items():
        prefix = next((old for old in renamed if key.startswith(old)), None)
        if prefix is not None:
            state[renamed[prefix] + key.removeprefix(prefix)] = tensor
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out, card


def checkpoint_row(name: str, checkpoint: Path, work: Path, weights: str) -> FrozenBackbone:
    file, card = export_spq_trunk(checkpoint, work / "trunks" / f"{name}.pth")
    return FrozenBackbone(name, card.backbone, weights, file, card.input_size, tuple(card.stages))


def training_steps_per_epoch(config: TrainConfig) -> int:
    split = make_split(config, archive_images(config.data))
    train_images = len(split.entries(archive_images(config.data), "train"))
    return max(1, train_images // min(config.batch_size, train_images))


def train_head(
    data: Path, row: FrozenBackbone, bits: int, args: argparse.Namespace
) -> tuple[Path, Trainer, float]:
    """Train the head on cached views; returns the chosen checkpoint, the trainer and the wall
    seconds of training after the cache was ready."""
    out = args.work / "runs" / f"{data.name}-{row.name}-{bits}"
    shutil.rmtree(out, ignore_errors=True)  # a stale best.pt would be chosen as this run's
    config = TrainConfig(
        data=str(data),
        out=str(out),
        model=row.spec(bits),
        backbone_weights=None if row.weights_file is None else str(row.weights_file),
        cached_views=VIEWS[data.name] if args.views is None else args.views,
        view_cache_dir=str(args.work / "view-cache"),
        seed=args.seed,
        threads=args.threads,
        device="cpu",
        epochs=1,
        temperature=args.temperature,
    )
    epochs = max(1, math.ceil(args.steps / training_steps_per_epoch(config)))
    config = config.model_copy(
        update={"epochs": epochs, "validate_every": max(1, epochs // args.validations)}
    )
    trainer = Trainer(config)
    trainer.prepare_view_cache()
    started = time.perf_counter()
    checkpoint = trainer.run()
    return checkpoint, trainer, time.perf_counter() - started


def test_output(model: SPQModel, data: Path) -> tuple[ValidationSet, BackboneOutput]:
    entries = entries_of_part(model, data, "test")
    images = load_tensor_set(entries, model.card.input_size).float().div(255)
    output = frozen_backbone_output(model, images, DEVICE)
    labels = [str(entry.label) for entry in entries]
    return ValidationSet(images, labels, [entry.group for entry in entries], output), output


def measure_row(data: Path, row: FrozenBackbone, args: argparse.Namespace) -> RowResult:
    result: RowResult | None = None
    tested: dict[str, ValidationSet] = {}
    for bits in args.bits:
        checkpoint, trainer, head_s = train_head(data, row, bits, args)
        model = load_checkpoint(checkpoint)
        # The trunk is the same in every run of a row (seeded, frozen): its test output is
        # computed once; the digest check makes sure.
        digest = trunk_digest(model.trunk)
        if digest not in tested:
            tested[digest], _ = test_output(model, data)
        test = tested[digest]
        assert test.backbone_output is not None
        if result is None:
            result = row_result(data, row, model, test, trainer)
        descriptors = embed_validation(model, test, DEVICE)
        codes = code_search_result(
            "codes",
            descriptors.numpy(),
            model.codebooks().detach().numpy(),
            model.card,
            test.labels,
            test.groups,
            (K,),
        ).metrics.precision[K]
        float_descriptor = score_method(
            "float", descriptors @ descriptors.T, test.labels, test.groups, (K,)
        ).metrics.precision[K]
        retention = codes / result.float_p10 if result.float_p10 > 0 else 0.0
        history = trainer.state.history
        result.runs.append(
            RunResult(
                bits=bits,
                codes_p10=codes,
                float_descriptor_p10=float_descriptor,
                retention=retention,
                passed=retention >= GOALS[bits],
                best_validation_p10=trainer.state.best_validation,
                epochs=len(history),
                head_training_s=round(head_s, 1),
                step_s=round(trainer.state.elapsed_s, 1),
            )
        )
        print_run(result, result.runs[-1])
    assert result is not None
    return result


def row_result(
    data: Path, row: FrozenBackbone, model: SPQModel, test: ValidationSet, trainer: Trainer
) -> RowResult:
    assert test.backbone_output is not None and trainer.view_cache is not None
    ceiling = ceiling_features(test.backbone_output)
    entries = entries_of_part(model, data, "test")
    histograms = describe_in_batches(entries, colour_histograms)
    return RowResult(
        dataset=data.name,
        row=row.name,
        backbone=row.backbone,
        weights=row.weights,
        input_size=model.card.input_size,
        test_images=len(test.labels),
        test_groups=len(set(test.groups)),
        float_p10=_p10(cosine_scores(ceiling), test),
        histogram_p10=_p10(cosine_scores(histograms), test),
        cache=repository_relative_cache(asdict(trainer.view_cache.cost)),
    )


def _p10(scores: torch.Tensor, test: ValidationSet) -> float:
    return score_method("m", scores, test.labels, test.groups, (K,)).metrics.precision[K]


HEADER = (
    f"{'dataset':<24} {'frozen backbone':<20} {'bits':>4} {'float P@10':>10} {'codes P@10':>10} "
    f"{'kept':>5} {'goal':>5} {'pass':>4} {'cache s':>8} {'head s':>7}"
)


def print_run(row: RowResult, run: RunResult) -> None:
    print(
        f"{row.dataset:<24} {row.row:<20} {run.bits:>4} {row.float_p10:>10.3f} "
        f"{run.codes_p10:>10.3f} {run.retention:>5.0%} {GOALS[run.bits]:>5.0%} "
        f"{'yes' if run.passed else 'NO':>4} {row.cache['forward_s']:>8.0f} "
        f"{run.head_training_s:>7.0f}",
        flush=True,
    )


def default_rows(args: argparse.Namespace, dataset: str) -> list[FrozenBackbone]:
    stages = tuple(args.resnet_stages)
    rows = [
        # kaiko-vits16 is timm's vit_small_patch16_224 built with dynamic_img_size, so it also
        # runs below 224 px (9.2 GFLOPs per tile at 224, 0.7 at 64).
        FrozenBackbone(
            "vit-s16 random",
            "kaiko-vits16",
            "random (seeded)",
            None,
            args.vit_input_size,
        ),
        FrozenBackbone(
            "resnet18 random", "resnet18", "random (seeded)", None, args.resnet_input_size, stages
        ),
    ]
    for number, weights in enumerate(args.weights):
        label = args.weights_label[number] if number < len(args.weights_label) else weights.name
        if _is_histosearch_checkpoint(weights):
            rows.append(checkpoint_row(f"resnet18 {label}", weights, args.work, label))
        else:
            rows.append(
                FrozenBackbone(
                    f"resnet18 {label}",
                    "resnet18",
                    f"file {weights.name}",
                    weights,
                    args.resnet_input_size,
                    stages,
                )
            )
    own = dict(item.split("=", 1) for item in args.spq_checkpoint)
    if dataset in own:
        rows.append(
            checkpoint_row(
                "SPQ trunk (own)", Path(own[dataset]), args.work, "SPQ from scratch, train groups"
            )
        )
    return [row for row in rows if not args.only or row.name in args.only]


def _is_histosearch_checkpoint(path: Path) -> bool:
    try:
        return "card" in read_checkpoint(path)
    except Exception:  # a publisher's weights file is not a checkpoint
        return False


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.backbones --quality", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), help="under ../shared/data"
    )
    parser.add_argument("--bits", nargs="+", type=int, default=[32, 64], choices=[32, 64])
    parser.add_argument(
        "--weights",
        nargs="*",
        type=Path,
        default=[],
        help="ResNet-18 weights: a torchvision-layout file or a histosearch checkpoint",
    )
    parser.add_argument("--weights-label", nargs="*", default=[], help="row label per --weights")
    parser.add_argument(
        "--spq-checkpoint",
        nargs="*",
        default=[],
        metavar="DATASET=FILE",
        help="the from-scratch SPQ checkpoint trained on DATASET's training groups",
    )
    parser.add_argument("--only", nargs="*", default=[], help="row names to run (default: all)")
    parser.add_argument("--vit-input-size", type=int, default=224)
    parser.add_argument("--resnet-input-size", type=int, default=64)
    parser.add_argument("--resnet-stages", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--views", type=int, default=None, help="cached views (default per set)")
    parser.add_argument("--steps", type=int, default=1000, help="head training steps per run")
    parser.add_argument("--validations", type=int, default=10, help="validations per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="CQC temperature of the head's training (default 0.5, at which the committed "
        "figures were measured; `histosearch train` defaults to 0.2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (head steps on a shared machine: 1; see the README)",
    )
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "var" / "backbone-quality")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbone_quality.json")
    return parser.parse_args(argv)


def merged_rows(out: Path, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows already in ``out`` that this run did not measure again, then this run's: runs
    of a few rows each (``--only``, ``--datasets``) build up one table."""
    fresh = {(row["dataset"], row["row"]) for row in measured}
    kept = []
    if out.is_file():
        kept = [
            row
            for row in json.loads(out.read_text()).get("rows", [])
            if (row["dataset"], row["row"]) not in fresh
        ]
    return kept + measured


def main(argv: Sequence[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows: list[RowResult] = []
    print(HEADER)
    for dataset in args.datasets:
        for row in default_rows(args, dataset):
            rows.append(measure_row(DATA_ROOT / dataset, row, args))
    result = {
        "what": "frozen backbone, cached views, SPQ head; P@10 on test groups (own group "
        "excluded), checkpoint chosen on validation groups; retention = codes / float features",
        "goals": {str(bits): goal for bits, goal in GOALS.items()},
        "threads": args.threads,
        "steps_per_run": args.steps,
        "seed": args.seed,
        "temperature": args.temperature,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rows": merged_rows(args.out, [asdict(row) for row in rows]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    print(f"wrote {args.out}")
