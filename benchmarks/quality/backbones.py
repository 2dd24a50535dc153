"""CPU cost per tile of every backbone preset: the SPQ model's ``encode`` with random weights.

    nice python -m benchmarks.quality.backbones [--threads 2] [--batch-size 32] [--only uni,h0-mini]
    nice python -m benchmarks.quality.backbones --quality [options: --quality --help]

``--quality`` measures retrieval quality instead: how much of a frozen backbone's own float
features' P@10 the 32- and 64-bit codes keep (``benchmarks/quality/backbone_quality.py``).

Speed does not depend on the weights, so each preset's architecture is built with random ones
(nothing is downloaded) under the SPQ head at its own input size, and one batch of tiles is
encoded after a one-tile warm-up. Batches of 32 tiles for the small models; the large ones get
fewer tiles (``TILES_BY_SIZE``), since a ViT-g costs seconds per tile on two cores. A model whose
float32 weights would not fit in the memory available (with room for activations) is skipped and
listed as such. The torchvision ResNets are measured too, for comparison.

Results: a table on stdout and ``benchmarks/results/backbones.json``. The machine is shared:
each figure is the best of ``--repeats`` runs, and the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, write_result
from model import ModelCard, build_model
from model.presets import PRESETS

RESNETS = ("resnet18", "resnet50")
# Tiles per timed batch by parameter count: the giants would take minutes for 32 tiles.
TILES_BY_SIZE = ((5e8, 4), (2e8, 8))
# Weights plus activations and the build's temporary copies: about 3x the float32 weights.
MEMORY_FACTOR = 3.0


def available_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def parameter_count_on_meta(card: ModelCard) -> int:
    from model.spq import SPQModel

    with torch.device("meta"):
        model = SPQModel(card)
    return sum(parameter.numel() for parameter in model.parameters())


def tiles_for(parameters: int, batch_size: int) -> int:
    for threshold, tiles in TILES_BY_SIZE:
        if parameters > threshold:
            return min(tiles, batch_size)
    return batch_size


def measure(name: str, batch_size: int, repeats: int) -> dict[str, Any]:
    card = ModelCard(backbone=name, stages=[4]) if name in RESNETS else ModelCard(backbone=name)
    if name in RESNETS:
        card = card.model_copy(update={"input_size": 224})
    parameters = parameter_count_on_meta(card)
    needed = MEMORY_FACTOR * 4 * parameters
    row: dict[str, Any] = {
        "backbone": name,
        "parameters": parameters,
        "input_size": card.input_size,
    }
    if needed > available_memory_bytes():
        row["skipped"] = (
            f"needs about {needed / 2**30:.1f} GiB, {available_memory_bytes() / 2**30:.1f} GiB free"
        )
        return row
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(card).eval()
    row["build_s"] = round(time.perf_counter() - started, 2)
    tiles = tiles_for(parameters, batch_size)
    images = torch.randn(tiles, 3, card.input_size, card.input_size)
    with torch.inference_mode():
        model.encode(images[:1])  # warm-up: first-call allocations and kernel selection
        best = min(_timed(model, images) for _ in range(repeats))
    row.update(
        tiles=tiles,
        ms_per_tile=round(1000 * best / tiles, 1),
        embedding_dim=model.card.embedding_dim,
        gflops_per_tile=round(model.card.flops_per_image / 1e9, 1),
    )
    del model
    gc.collect()
    return row


def _timed(model: Any, images: torch.Tensor) -> float:
    started = time.perf_counter()
    model.encode(images)
    return time.perf_counter() - started


def main() -> None:
    if "--quality" in sys.argv[1:]:
        from benchmarks.quality import backbone_quality

        backbone_quality.main([arg for arg in sys.argv[1:] if arg != "--quality"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="tiles per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per model; best kept")
    parser.add_argument("--only", default="", help="comma-separated backbones (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbones.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [*PRESETS, *RESNETS]
    if args.only:
        names = [name for name in names if name in set(args.only.split(","))]
    rows = []
    load_before = os.getloadavg()
    print(f"{'backbone':<15} {'params':>8} {'px':>4} {'tiles':>5} {'ms/tile':>9} {'GFLOPs':>7}")
    for name in names:
        row = measure(name, args.batch_size, args.repeats)
        rows.append(row)
        if "skipped" in row:
            print(f"{name:<15} {row['parameters'] / 1e6:>7.0f}M  skipped: {row['skipped']}")
        else:
            print(
                f"{name:<15} {row['parameters'] / 1e6:>7.0f}M {row['input_size']:>4} "
                f"{row['tiles']:>5} {row['ms_per_tile']:>9.1f} {row['gflops_per_tile']:>7.1f}"
            )
    result = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "what": "SPQModel.encode per tile, random weights, float32, CPU, best of repeats",
        # The machine is shared: a load above the core count slows every figure alike.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
