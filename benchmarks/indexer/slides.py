"""Whole-slide benchmark: tissue detection, slide pipeline vs bare forward, memory, Deep Zoom tiles.

    nice python -m benchmarks.indexer.slides [--side 50000] [--tile-size 224] [--mpp 0.5]

The slide is generated once into ``--workdir`` (default ``/tmp/histosearch-bench``) and reused:
a ``side`` x ``side`` pyramidal JPEG-tiled TIFF at 0.25 um/px, real Kather 2016 H&E tiles (each
scaled to 300 level-0 px, their physical size) laid in a disc covering about 40% of the glass,
written tile by tile by tifffile (never held whole in memory).

- ``tissue detection``: `plan_tiles` (overview read from the pyramid, mask, tile selection).
- ``slide pipeline``: `index_slides` into a fresh index: tissue mask, region reads in the thread
  pool, resize, thumbnail, preprocess, embed, durable SQLite write, final snapshot.
- ``pipeline, random descriptors``: the same run with random descriptors instead of the network,
  i.e. what the pipeline itself costs per tile (reads, thumbnails, SQLite writes).
- ``bare forward``: ``SPQModel.encode`` alone on the first ``--forward-tiles`` tissue tiles of the
  same slide, read and preprocessed before the clock starts: the floor the pipeline cannot beat.
  It is timed just before and just after the pipeline (the machine's load drifts during a run),
  and the pipeline is compared with their mean; the pipeline's forwards take the same batch size.
- ``CPU per tile``: process CPU time (every thread) per tile of the pipeline and of the bare
  forward; unlike wall-clock rates it hardly moves with the other jobs' load on a shared machine.
- ``peak RSS``: the process's high-water mark of resident memory (``VmHWM``, reset just before
  the run through ``/proc/self/clear_refs``) while the pipeline encodes the whole slide.
- ``Deep Zoom``: `service.slide_library.SlideLibrary` on the new index, in process (no HTTP):
  ``cold`` is the first request of each of ``--dzi-tiles`` distinct tiles of the two most detailed
  levels (not in the tile cache; the slide file is in the OS page cache after indexing), ``warm``
  the same tiles again, answered from the LRU.

The model is an SPQ model with the default card (random weights: speed does not depend on
training); ``--input-size 224`` measures a network with the input size of the 224-px presets.
Results: a table on stdout and ``benchmarks/results/slides.json``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import RESULTS, write_result
from indexer.index.store import ArchiveIndex
from indexer.index.tiling import TilingConfig
from indexer.ingest.slides import (
    SlideConfig,
    index_slides,
    open_slide,
    plan_tiles,
    read_tile,
    slide_resolution,
)
from indexer.ingest.sources import ArchiveImage
from model import Embedder, ModelCard, build_model
from model.preprocess import preprocess
from service.slide_library import SlideLibrary
from support.slide_samples import Mosaic, kather_images, write_mosaic_slide

SLIDE_MPP = 0.25
CELL = 300  # a 150 px Kather tile at ~0.5 um/px covers 300 px at 0.25 um/px
TISSUE_SHARE = 0.40


def generated_slide(workdir: Path, side: int) -> tuple[Path, float]:
    """The benchmark slide (made on first use); returns its path and the seconds making it took."""
    path = workdir / f"mosaic-{side}px-{SLIDE_MPP}mpp.tif"
    if path.exists():
        return path, 0.0
    workdir.mkdir(parents=True, exist_ok=True)
    cells = math.ceil(side / CELL)
    radius = cells * math.sqrt(TISSUE_SHARE / math.pi)
    images = kather_images(200)
    tissue = {
        (col, row): images[(col * 31 + row * 17) % len(images)]
        for row in range(cells)
        for col in range(cells)
        if (col + 0.5 - cells / 2) ** 2 + (row + 0.5 - cells / 2) ** 2 <= radius**2
    }
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    write_mosaic_slide(partial, Mosaic(side, side, CELL, tissue), SLIDE_MPP)
    partial.rename(path)
    return path, time.perf_counter() - started


def peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bare_forward(
    model: torch.nn.Module, card: ModelCard, tiles: list[Image.Image], batch_size: int
) -> tuple[float, float]:
    """(tiles per second, CPU milliseconds per tile) of ``SPQModel.encode`` alone."""
    batches = [
        preprocess(tiles[start : start + batch_size], card)
        for start in range(0, len(tiles), batch_size)
    ]
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for batch in batches:
            model.encode(batch)  # type: ignore[operator]
    cpu_ms = (time.process_time() - cpu_started) * 1000.0 / len(tiles)
    return len(tiles) / (time.perf_counter() - started), cpu_ms


def bare_forward_run(
    slide_path: Path, config: SlideConfig, args: argparse.Namespace
) -> tuple[float, float]:
    """`bare_forward` on the slide's first ``--forward-tiles`` tissue tiles (in a child process)."""
    slide = open_slide(slide_path)
    plan = plan_tiles(slide, slide_resolution(slide, slide_path, None), config)
    sample = [
        read_tile(slide, plan, box, config.tile_size) for box in plan.boxes[: args.forward_tiles]
    ]
    slide.close()
    torch.manual_seed(0)
    card = ModelCard(input_size=args.input_size)
    return bare_forward(build_model(card).eval(), card, sample, config.batch_size)


def percentiles(samples: list[float]) -> dict[str, float]:
    array = np.asarray(samples) * 1000.0
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99))}


def deep_zoom_latencies(
    index_dir: Path, slide_path: Path, slide_id: str, count: int
) -> dict[str, Any]:
    library = SlideLibrary(index_dir, [slide_path.parent])
    try:
        level_tiles = library.level_tiles(slide_id)
        top = len(level_tiles) - 1
        keys = [
            (level, col, row)
            for level in (top, top - 1)
            for col in range(level_tiles[level][0])
            for row in range(level_tiles[level][1])
        ]
        chosen = random.Random(0).sample(keys, min(count, len(keys)))
        rounds: dict[str, list[float]] = {"cold": [], "warm": []}
        for name in ("cold", "warm"):
            for level, col, row in chosen:
                started = time.perf_counter()
                library.tile(slide_id, level, col, row)
                rounds[name].append(time.perf_counter() - started)
        return {
            "tiles": len(chosen),
            "levels": [top - 1, top],
            "cold": percentiles(rounds["cold"]),
            "warm": percentiles(rounds["warm"]),
        }
    finally:
        library.close()


def pipeline_run(
    slide_path: Path, index_dir: Path, config: SlideConfig, input_size: int
) -> dict[str, Any]:
    """Index the slide into a fresh index (in a child process); time, tiles and peak RSS."""
    shutil.rmtree(index_dir, ignore_errors=True)
    torch.manual_seed(0)
    card = ModelCard(input_size=input_size)
    model = build_model(card).eval()
    index = ArchiveIndex.create_from_codebooks(
        index_dir, model.codebooks().detach().numpy(), card=card.model_dump(mode="json")
    )
    rss_before = rss_bytes()
    peak_rss_reset()
    started, cpu_started = time.perf_counter(), time.process_time()
    archive = [ArchiveImage(slide_path, "mosaic", "mosaic", "benchmark")]
    # Forward passes of the batch size the bare forward uses (as `histosearch index` does).
    embedder = Embedder(model, torch.device("cpu"), config.batch_size)
    summary = index_slides(archive, index, embedder, config)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak = peak_rss_bytes()
    first = index.get(1)
    index.close()
    assert first is not None
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tiles_added": summary.tiles_added,
        "peak_rss": peak,
        "rss_before": rss_before,
        "slide_id": str(first.extra["slide_id"]),
    }


def pipeline_without_model_tiles_per_s(
    slide_path: Path, workdir: Path, config: SlideConfig, card: ModelCard, codebooks: Any
) -> float:
    """The slide pipeline with random descriptors instead of the network: its own cost alone."""
    directory = workdir / "index-no-model"
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)

    def random_descriptors(images: Any) -> Any:
        return rng.standard_normal((len(images), card.descriptor_dim)).astype(np.float32)

    index = ArchiveIndex.create_from_codebooks(
        directory, codebooks, card=card.model_dump(mode="json")
    )
    started = time.perf_counter()
    archive = [ArchiveImage(slide_path, "mosaic", "mosaic", "benchmark")]
    summary = index_slides(archive, index, random_descriptors, config)
    seconds = time.perf_counter() - started
    index.close()
    shutil.rmtree(directory, ignore_errors=True)
    return summary.tiles_added / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=50_000, help="slide edge in level-0 px")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--input-size",
        type=int,
        default=ModelCard().input_size,
        help="the network's input in px (default: the default card's; 224 = the 224-px presets)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-tiles", type=int, default=1024)
    parser.add_argument("--dzi-tiles", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/histosearch-bench"))
    parser.add_argument("--output", type=Path, default=RESULTS / "slides.json")
    args = parser.parse_args()

    slide_path, generation_s = generated_slide(args.workdir, args.side)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    card = ModelCard(input_size=args.input_size)
    model = build_model(card).eval()
    config = SlideConfig(
        mpp=args.mpp,
        tiling=TilingConfig(tile_size=args.tile_size),
        batch_size=args.batch_size,
        workers=args.workers,
        progress=False,
    )

    slide = open_slide(slide_path)
    mpp = slide_resolution(slide, slide_path, None)
    started = time.perf_counter()
    plan = plan_tiles(slide, mpp, config)
    tissue_s = time.perf_counter() - started
    slide.close()

    index_dir = args.workdir / "index"
    # Each run has a fresh process of its own, made the same way: its peak RSS is its own, and
    # the bare forward and the pipeline start from the same state (in one run with the forward
    # timed in this parent process, it managed 31 tiles/s while the pipeline's fresh process
    # managed 79 including its reads and writes).
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        bare_before, bare_cpu_before = pool.apply(bare_forward_run, (slide_path, config, args))
    with spawn.Pool(1) as pool:
        run = pool.apply(pipeline_run, (slide_path, index_dir, config, args.input_size))
    with spawn.Pool(1) as pool:
        bare_after, bare_cpu_after = pool.apply(bare_forward_run, (slide_path, config, args))
    pipeline_s, peak, rss_before = run["seconds"], run["peak_rss"], run["rss_before"]
    bare = (bare_before + bare_after) / 2
    bare_cpu_ms = (bare_cpu_before + bare_cpu_after) / 2
    pipeline_cpu_ms = run["cpu_seconds"] * 1000.0 / max(1, run["tiles_added"])
    without_model = pipeline_without_model_tiles_per_s(
        slide_path, args.workdir, config, card, model.codebooks().detach().numpy()
    )
    summary_tiles = run["tiles_added"]
    deep_zoom = deep_zoom_latencies(index_dir, slide_path, run["slide_id"], args.dzi_tiles)

    results: dict[str, Any] = {
        "slide": {
            "side_px": args.side,
            "mpp": SLIDE_MPP,
            "file_bytes": slide_path.stat().st_size,
            "decoded_level0_bytes": args.side * args.side * 3,
            "generation_s": generation_s or None,
        },
        "tiles": {"mpp": args.mpp, "size_px": args.tile_size, "level": plan.level},
        "tissue": {
            "seconds": tissue_s,
            "mask_shape": list(plan.mask.mask.shape),
            "mask_tissue_share": plan.mask.tissue_share,
            "tissue_tiles": len(plan.boxes),
            "background_tiles": plan.background,
        },
        "pipeline": {
            "tiles_added": summary_tiles,
            "seconds": pipeline_s,
            "tiles_per_s": summary_tiles / pipeline_s,
        },
        "pipeline_without_model_tiles_per_s": without_model,
        "bare_forward": {
            "tiles": min(args.forward_tiles, len(plan.boxes)),
            "tiles_per_s": bare,
            "before_pipeline_tiles_per_s": bare_before,
            "after_pipeline_tiles_per_s": bare_after,
            "cpu_ms_per_tile": bare_cpu_ms,
        },
        # CPU time (all threads of the process) per tile hardly depends on the other jobs'
        # load, which moved the wall-clock figures by up to 3x within a minute on this machine.
        "pipeline_cpu_ms_per_tile": pipeline_cpu_ms,
        "bare_over_pipeline_cpu": bare_cpu_ms / pipeline_cpu_ms,
        "pipeline_over_bare": summary_tiles / pipeline_s / bare,
        "memory": {
            "indexing_process_rss_before_slide_bytes": rss_before,
            "indexing_process_peak_rss_bytes": peak,
        },
        "deep_zoom": deep_zoom,
        "card": {"backbone": card.backbone, "input_size": card.input_size},
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        # The machine is shared: its load average says how much the figures were disturbed.
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, results)
    mask_rows, mask_cols = plan.mask.mask.shape
    rows = [
        (
            "slide",
            f"{args.side} x {args.side} px at {SLIDE_MPP} um/px, "
            f"{slide_path.stat().st_size / 1e6:.0f} MB on disk",
        ),
        (
            "tissue detection",
            f"{tissue_s:.2f} s: {len(plan.boxes)} tissue, "
            f"{plan.background} glass tiles (mask {mask_cols} x {mask_rows})",
        ),
        (
            "slide pipeline",
            f"{summary_tiles / pipeline_s:.1f} tiles/s "
            f"({summary_tiles} tiles in {pipeline_s:.1f} s)",
        ),
        ("pipeline, random descriptors", f"{without_model:.1f} tiles/s (its own cost, no network)"),
        (
            "bare forward",
            f"{bare:.1f} tiles/s, mean of {bare_before:.1f} before and {bare_after:.1f} after "
            f"(pipeline = {results['pipeline_over_bare']:.2f} x bare)",
        ),
        (
            "CPU per tile",
            f"pipeline {pipeline_cpu_ms:.1f} ms, bare forward {bare_cpu_ms:.1f} ms "
            f"(bare / pipeline = {bare_cpu_ms / pipeline_cpu_ms:.2f})",
        ),
        (
            "peak RSS, indexing process",
            f"{peak / 2**20:.0f} MiB (before: {rss_before / 2**20:.0f} MiB; "
            f"level 0 decoded: {args.side**2 * 3 / 2**30:.1f} GiB)",
        ),
        (
            "Deep Zoom tile, cold",
            f"p50 {deep_zoom['cold']['p50_ms']:.1f} ms, p99 {deep_zoom['cold']['p99_ms']:.1f} ms",
        ),
        (
            "Deep Zoom tile, warm",
            f"p50 {deep_zoom['warm']['p50_ms']:.3f} ms, p99 {deep_zoom['warm']['p99_ms']:.3f} ms",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
