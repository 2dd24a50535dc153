"""Training speed in float32 against bfloat16 mixed precision, on this machine's CPU (or GPU).

    nice python -m benchmarks.quality.precision [--threads 2] [--steps 12] [--datasets kather pcam]

``--precision auto`` has to know whether bfloat16 pays on the device it runs on. On a CPU that
depends on the silicon, not on whether oneDNN can run bfloat16 at all: AMX tile units multiply
bfloat16 matrices several times faster than AVX-512 does in float32, while a CPU with only
AVX512-BF16 converts and accumulates in vector registers and can end up slower than float32.
This benchmark measures it with the real thing: for each set, the retrieval benchmark's recipe
(`benchmarks.quality.retrieval.PLANS`: its input size, its stain branch) is built once per precision
with ``Trainer`` and times ``--steps`` training steps (two augmented views, forward, CQC loss,
backward, Adam) on batches of the set's own training tiles, after two warm-up steps. Each figure
is the best of ``--repeats`` timings, since the machine may be shared.

Results: a table on stdout and ``benchmarks/results/precision.json``, with this CPU's features
(`model.preprocess.cpu_features`) and what ``--precision auto`` chooses on it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from benchmarks.common import RESULTS, write_result
from benchmarks.quality.retrieval import PLANS, plan_data
from indexer.learn.config import TrainConfig
from indexer.learn.training import Trainer
from model.preprocess import cpu_features, select_device, select_precision

PRECISIONS: tuple[Literal["fp32", "bf16"], ...] = ("fp32", "bf16")
WARM_UP_STEPS = 2


def images_per_second(trainer: Trainer, steps: int, repeats: int) -> float:
    """Training images per second (one image = its two views) over ``steps`` steps, best of
    ``repeats`` timings, after the warm-up steps that let oneDNN pick its kernels."""
    batch = trainer.config.batch_size
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        chosen = torch.randint(0, trainer.train_images.shape[0], (batch,), generator=generator)
        trainer.train_step(trainer.train_images[chosen])

    for _ in range(WARM_UP_STEPS):
        step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - started)
    return steps * batch / best


def measure_dataset(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    plan = PLANS[name]
    row: dict[str, Any] = {"dataset": name}
    for precision in PRECISIONS:
        config = TrainConfig(
            data=str(plan_data(plan, RESULTS / plan.name)),
            out=str(scratch / f"{name}-{precision}"),
            precision=precision,
            threads=args.threads,
            device=args.device,
            **{**plan.settings, "epochs": 1},
        )
        trainer = Trainer(config)
        row["input_size"] = config.model.input_size
        row[f"{precision}_images_per_s"] = images_per_second(trainer, args.steps, args.repeats)
        del trainer
    row["bf16_speed_up"] = row["bf16_images_per_s"] / row["fp32_images_per_s"]
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| set | input | float32 images/s | bfloat16 images/s | bfloat16 / float32 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['input_size']} px | {row['fp32_images_per_s']:.1f} | "
            f"{row['bf16_images_per_s']:.1f} | {row['bf16_speed_up']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training images/s in float32 and bfloat16 mixed precision for the "
        "retrieval benchmark's recipes, and what --precision auto picks on this machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=sorted(PLANS),
        default=["kather", "pcam"],
        help="which benchmark recipes to time (Kather at 64 px, PCam at 96 px by default)",
    )
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per figure")
    parser.add_argument("--repeats", type=int, default=2, help="timings per figure; best kept")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "precision.json", help="where the JSON goes"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = select_device(args.device)
    scratch = Path(tempfile.mkdtemp(prefix="histosearch-precision-"))
    try:
        rows = [measure_dataset(name, args, scratch) for name in args.datasets]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "device": str(device),
        "cpu": cpu_features(),
        "threads": args.threads,
        "steps": args.steps,
        "auto_chooses": str(select_precision("auto", device)).removeprefix("torch."),
        "rows": rows,
    }
    print(table(rows))
    print(f"--precision auto chooses {result['auto_chooses']} here; CPU: {result['cpu']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
