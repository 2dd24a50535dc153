"""Scale-out costs: a sharded search against one index, and encoding on Ray against one process.

    nice python -m benchmarks.indexer.distributed [--items 1000000] [--shards 4] [--queries 300]

1. Search: ``--items`` seeded synthetic codes (as `benchmarks.indexer.index_scale` makes them)
   once in one `ArchiveIndex` and once in a `ShardedIndex` of ``--shards`` shards, in this
   process. Times one query per call (median over turns, the two indexes alternating) and batches of
   ``--queries`` (best of rounds), `search_arrays` and `search` with records. Goal: the merge
   costs at most 1.2x. The two are also checked to return the same ids.
2. Encoding: a real archive (``--archive``, default the 7,000 PCam tiles, 96 px, one tile each,
   embedded by a 64 px model) through `index_archive` in this process, and through
   `encode_archive_on_ray` on a local Ray cluster of this machine's CPUs with 1 and 2 embedding
   actors, every model on one torch thread; the methods take turns, ``--repeats`` times, and the
   load average is recorded around each run (the machine is shared). Ray's fixed start (actors
   starting and loading the model, tiling workers starting) is measured on an eight-image
   archive right before each Ray run and reported apart. Goal:
   Ray with 1 actor takes at most 1.15x the single process's time once started.

Results: a table on stdout and ``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from benchmarks.indexer.index_scale import (
    ADD_CHUNK,
    best_of_interleaved,
    median_single_query_us,
    seeded_codebooks,
    seeded_codes,
    seeded_queries,
    synthetic_records,
)
from indexer.index.shards import ShardedIndex
from indexer.index.store import ArchiveIndex
from indexer.index.tiling import TilingConfig
from indexer.ingest.pipeline import PipelineConfig, index_archive
from indexer.ingest.sources import ArchiveImage, load_folder
from model import Embedder, ModelCard, build_model, save_checkpoint

MAX_MERGE_RATIO = 1.2
MAX_RAY_RATIO = 1.15
K = 10
# Torch threads of every model, in the process and in each actor. One: on a loaded 2-core machine
# two threads per forward ran 4x slower than one (24 vs 6 ms per 64 px tile, load average 6-9).
MODEL_THREADS = 1
# Search measurements, each one query per call over every query and batches in turns.
PASSES = 3
# Images of the run that measures Ray's fixed start: enough for every tiling task slot of this
# machine to start its worker (2 CPUs, 0.5 CPU a task).
START_IMAGES = 8


# ---- search --------------------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average (other work on this shared machine)."""
    return os.getloadavg()[0]


def fill(index: ArchiveIndex | ShardedIndex, count: int) -> float:
    started = time.perf_counter()
    codes = seeded_codes(count)
    for start in range(0, count, ADD_CHUNK):
        stop = min(count, start + ADD_CHUNK)
        index.add_codes(codes[start:stop], synthetic_records(start, stop))
    index.flush()
    return time.perf_counter() - started


def measure_search(workdir: Path, items: int, shards: int, query_count: int) -> dict[str, Any]:
    codebooks = seeded_codebooks()
    single = ArchiveIndex.create_from_codebooks(workdir / "single", codebooks, card={})
    sharded = ShardedIndex.create_from_codebooks(
        workdir / "sharded", codebooks, card={}, shard_count=shards
    )
    build_single, build_sharded = fill(single, items), fill(sharded, items)
    queries = seeded_queries(query_count, codebooks)
    same = bool(
        np.array_equal(single.search_arrays(queries, K)[1], sharded.search_arrays(queries, K)[1])
    )
    passes: list[dict[str, Any]] = []
    for _ in range(PASSES):
        before = load_average()
        singles = median_single_query_us(
            {
                "one": (lambda q: single.search_arrays(q, K), queries),
                "sharded": (lambda q: sharded.search_arrays(q, K), queries),
                "one_records": (lambda q: single.search(q, K), queries),
                "sharded_records": (lambda q: sharded.search(q, K), queries),
            },
            rounds=1,
        )
        batch = best_of_interleaved(
            {
                "one": (lambda q: single.search_arrays(q, K), queries, False),
                "sharded": (lambda q: sharded.search_arrays(q, K), queries, False),
            },
            rounds=3,
        )
        passes.append(
            {
                "load_average": [before, load_average()],
                "single_query_us": singles,
                "batch_query_us": batch,
                "ratio_single": singles["sharded"] / singles["one"],
                "ratio_single_records": singles["sharded_records"] / singles["one_records"],
                "ratio_batch": batch["sharded"] / batch["one"],
            }
        )
    single.close()
    sharded.close()
    # The pass with the median single-query ratio stands for the run; every pass is kept.
    middle = sorted(passes, key=lambda entry: float(entry["ratio_single"]))[len(passes) // 2]
    return {
        "items": items,
        "shards": shards,
        "k": K,
        "queries": query_count,
        "same_ids": same,
        "build_seconds": {"one": build_single, "sharded": build_sharded},
        **middle,
        "passes": passes,
        "ratio_spread": {
            name: [min(p[name] for p in passes), max(p[name] for p in passes)]
            for name in ("ratio_single", "ratio_single_records", "ratio_batch")
        },
    }


# ---- encoding ------------------------------------------------------------------------------------

# Tiles of each archive, one per PCam image, 64 px pieces of the larger Kather ones.
TILINGS = {
    "pcam-96px-7k": TilingConfig(tile_size=96, min_tissue=0.25),
    "kather2016-texture-240": TilingConfig(tile_size=64, min_tissue=0.25),
}


def encode_once(
    archive: Sequence[ArchiveImage],
    checkpoint: Path,
    workdir: Path,
    actors: int | None,
    tiling: TilingConfig,
) -> tuple[float, int]:
    """One run into a fresh index: in this process (``actors`` None) or on Ray."""
    from indexer.ingest.distributed import RayEncodingConfig, encode_archive_on_ray

    directory = Path(tempfile.mkdtemp(dir=workdir)) / "index"
    config = PipelineConfig(tiling=tiling, batch_size=64, workers=2, progress=False)
    with ArchiveIndex.create(directory, checkpoint) as index:
        started = time.perf_counter()
        if actors is None:
            torch.set_num_threads(MODEL_THREADS)
            embedder = Embedder(index_model(checkpoint), torch.device("cpu"))
            summary = index_archive(archive, index, embedder, config)
        else:
            # One CPU per actor gives each actor's model MODEL_THREADS threads, as in the process.
            cpus = min(float(MODEL_THREADS), ((os.cpu_count() or 2) - 0.5) / actors)
            ray_config = RayEncodingConfig("auto", actors, cpus)
            summary = encode_archive_on_ray(archive, index, checkpoint, config, ray_config)
        seconds = time.perf_counter() - started
    shutil.rmtree(directory.parent)
    return seconds, summary.tiles_added


def index_model(checkpoint: Path) -> Any:
    from model import load_checkpoint

    return load_checkpoint(checkpoint)


def measure_encoding(workdir: Path, repeats: int, archive_name: str) -> dict[str, Any]:
    import ray

    torch.manual_seed(0)
    checkpoint = workdir / "model.pt"
    save_checkpoint(build_model(ModelCard(input_size=64)), checkpoint)
    archive = load_folder(shared_data_root() / archive_name)
    tiling = TILINGS[archive_name]
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level=logging.WARNING)
    cluster_start = time.perf_counter() - started
    loads: dict[str, list[float]] = {"process": [], "ray_1": [], "ray_2": []}
    try:
        runs: dict[str, list[float]] = {"process": [], "ray_1": [], "ray_2": []}
        tiles = 0
        starts: dict[str, list[float]] = {"ray_1": [], "ray_2": []}
        plans: list[tuple[str, int | None]] = [("process", None), ("ray_1", 1), ("ray_2", 2)]
        for _ in range(repeats):
            for name, actors in plans:
                if actors is not None:
                    # Right before each Ray run, a run of a few images: what a run costs beyond
                    # its images (Ray Data planning, the actors starting and loading the model,
                    # tiling workers starting and importing torch for the thumbnails).
                    starts[name].append(
                        encode_once(archive[:START_IMAGES], checkpoint, workdir, actors, tiling)[0]
                    )
                before = load_average()
                seconds, tiles = encode_once(archive, checkpoint, workdir, actors, tiling)
                runs[name].append(seconds)
                loads[name] += [before, load_average()]
    finally:
        ray.shutdown()
    startup = {name: min(values) for name, values in starts.items()}
    best = {name: min(values) for name, values in runs.items()}
    steady = {name: best[name] - startup[name] if name in startup else best[name] for name in best}
    return {
        "archive": archive_name,
        "images": len(archive),
        "tiles": tiles,
        "input_size": 64,
        "runs_seconds": runs,
        "load_average": {name: [min(v), max(v)] for name, v in loads.items()},
        "seconds": best,
        "ray_cluster_start_seconds": cluster_start,
        "ray_start_seconds": startup,
        "seconds_after_start": steady,
        "tiles_per_second": {name: tiles / value for name, value in best.items()},
        "ratio_ray_1_total": best["ray_1"] / best["process"],
        "ratio_ray_1_after_start": steady["ray_1"] / steady["process"],
        "ratio_ray_2_after_start": steady["ray_2"] / steady["process"],
    }


# ---- report --------------------------------------------------------------------------------------


def print_table(search: dict[str, Any] | None, encoding: dict[str, Any] | None) -> None:
    rows = [] if search is None else _search_rows(search)
    if encoding is not None:
        rows += _encoding_rows(encoding)
    print(f"{'what':<64} {'target':>8} {'ratio':>7}  detail")
    for what, target, ratio, detail in rows:
        met = "" if target == "(report)" else ("met" if ratio <= float(target[3:-1]) else "NOT met")
        print(f"{what:<64} {target:>8} {ratio:7.3f}  {detail} {met}")
    if search is not None:
        _print_search_notes(search)
    if encoding is not None:
        _print_encoding_notes(encoding)


Row = tuple[str, str, float, str]


def _search_rows(search: dict[str, Any]) -> list[Row]:
    return [
        (
            f"sharded / one index, one query per call, {search['items']:,} codes",
            f"<= {MAX_MERGE_RATIO}x",
            search["ratio_single"],
            f"{search['single_query_us']['one']:.0f} -> "
            f"{search['single_query_us']['sharded']:.0f} us",
        ),
        (
            "  the same with records (what the service asks)",
            f"<= {MAX_MERGE_RATIO}x",
            search["ratio_single_records"],
            f"{search['single_query_us']['one_records']:.0f} -> "
            f"{search['single_query_us']['sharded_records']:.0f} us",
        ),
        (
            f"sharded / one index, {search['queries']} queries per call",
            f"<= {MAX_MERGE_RATIO}x",
            search["ratio_batch"],
            f"{search['batch_query_us']['one']:.1f} -> "
            f"{search['batch_query_us']['sharded']:.1f} us/q",
        ),
    ]


def _encoding_rows(encoding: dict[str, Any]) -> list[Row]:
    return [
        (
            "Ray 1 actor / one process, encoding time after Ray's start",
            f"<= {MAX_RAY_RATIO}x",
            encoding["ratio_ray_1_after_start"],
            f"{encoding['tiles_per_second']['process']:.0f} -> "
            f"{encoding['tiles_per_second']['ray_1']:.0f} tiles/s in all",
        ),
        (
            "Ray 2 actors / one process, after start",
            "(report)",
            encoding["ratio_ray_2_after_start"],
            f"{encoding['tiles_per_second']['ray_2']:.0f} tiles/s in all",
        ),
        (
            "Ray 1 actor / one process, whole run",
            "(report)",
            encoding["ratio_ray_1_total"],
            f"start {encoding['ray_start_seconds']['ray_1']:.1f} s",
        ),
    ]


def _print_search_notes(search: dict[str, Any]) -> None:
    print(f"sharded search returns the same ids as one index: {search['same_ids']}")
    spread = search["ratio_spread"]
    print(
        "search ratios over passes: "
        + ", ".join(f"{name} {low:.2f}-{high:.2f}" for name, (low, high) in spread.items())
        + f"; load average {min(p['load_average'][0] for p in search['passes']):.1f}-"
        + f"{max(p['load_average'][1] for p in search['passes']):.1f}"
    )


def _print_encoding_notes(encoding: dict[str, Any]) -> None:
    print(
        f"encoding {encoding['tiles']} tiles of {encoding['archive']}: runs (s) "
        + ", ".join(
            f"{name} {' / '.join(f'{v:.1f}' for v in values)}"
            for name, values in encoding["runs_seconds"].items()
        )
        + f"; Ray cluster start {encoding['ray_cluster_start_seconds']:.1f} s; load average "
        + ", ".join(
            f"{name} {low:.1f}-{high:.1f}" for name, (low, high) in encoding["load_average"].items()
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="encoding runs per method")
    parser.add_argument("--no-encoding", action="store_true", help="search part only")
    parser.add_argument("--no-search", action="store_true", help="encoding part only")
    parser.add_argument("--archive", choices=sorted(TILINGS), default="pcam-96px-7k")
    parser.add_argument("--output", type=Path, default=RESULTS / "distributed.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        search = (
            None
            if args.no_search
            else measure_search(workdir, args.items, args.shards, args.queries)
        )
        encoding = (
            None if args.no_encoding else measure_encoding(workdir, args.repeats, args.archive)
        )
    print_table(search, encoding)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    payload = {"machine": machine, "search": search, "encoding": encoding}
    write_result(args.output, payload)
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
