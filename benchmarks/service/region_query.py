"""Region query cost: a 2048 x 1536 upload (the size of a BACH photo) tiled and searched.

    nice python -m benchmarks.service.region_query [--runs 5] \
        [--workdir /tmp/histosearch-bench-regions]

The archive is `benchmarks.service.service_load`'s (10,000 items: 980 real tiles encoded by the
default card with random weights, the rest perturbed copies of their codes); the index's tile
geometry is set to 224 px at 0.5 um/px, the `histosearch index --source slides` geometry of
docs/slides.md. The region is a mosaic of real Kather 2016 tiles (150 px) filling 2048 x 1536. Each
case runs the service's own engine in process (decode, scale, tile, tissue check, one batched embed,
one batched search, aggregation; no HTTP), ``--runs`` times after one warm-up; medians are reported.

- ``tile``: one 224 px Kather crop, the single-image path;
- ``region at 0.5 um/px``: 70 tissue tiles, capped to the default 64;
- ``region at 0.42 um/px`` (BACH's resolution): scaled to 1720 x 1290, 48 tiles.

Results: a table on stdout and ``benchmarks/results/region_query.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import RESULTS, write_result
from benchmarks.service.service_load import DATA, build_archive, load_or_build_model
from indexer.index.store import ArchiveIndex
from model import load_checkpoint
from service.engine import SearchEngine, Upload
from service.regions import IndexTiling

SLIDE_POOL_K = 100
REGION = (2048, 1536)


def kather_mosaic(size: tuple[int, int]) -> Image.Image:
    paths = sorted((DATA / "kather2016-texture-240").rglob("*.tif"))
    canvas = Image.new("RGB", size, "white")
    number = 0
    for y in range(0, size[1], 150):
        for x in range(0, size[0], 150):
            with Image.open(paths[number % len(paths)]) as tile:
                canvas.paste(tile.convert("RGB"), (x, y))
            number += 1
    return canvas


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_case(engine: SearchEngine, data: bytes, mpp: float | None, runs: int) -> dict[str, Any]:
    upload = Upload("q.png", data)
    engine.search_upload(upload, SLIDE_POOL_K, None, mpp)  # warm-up
    totals, decodes, embeds, searches, tiles = [], [], [], [], 0
    for _ in range(runs):
        start = time.perf_counter()
        outcome = engine.search_upload(upload, SLIDE_POOL_K, None, mpp)
        totals.append((time.perf_counter() - start) * 1000.0)
        decodes.append(outcome.decode_ms)
        embeds.append(outcome.embed_ms)
        searches.append(outcome.search_ms)
        tiles = outcome.query_tiles
        tissue = outcome.tissue_tiles
    return {
        "query_tiles": tiles,
        "tissue_tiles": tissue,
        "total_ms": round(statistics.median(totals), 1),
        "decode_and_tile_ms": round(statistics.median(decodes), 1),
        "embed_ms": round(statistics.median(embeds), 1),
        "search_ms": round(statistics.median(searches), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/histosearch-bench-regions"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_or_build_model(None, args.workdir)
    index_dir = args.workdir / "index"
    if not (index_dir / "manifest.json").exists():
        build_archive(checkpoint, index_dir)
    # One torch thread: on the shared 2-core machine, two threads took 112 ms for one tile's
    # forward against 5.7 ms on one (threads spinning against the other work).
    torch.set_num_threads(1)
    engine = SearchEngine(
        load_checkpoint(checkpoint).eval(),
        ArchiveIndex.open(index_dir),
        torch.device("cpu"),
        workers=1,
        max_pending=4,
        max_image_pixels=40_000_000,
        tiling=IndexTiling(tile_size=224, mpp=0.5),
        max_query_tiles=64,
    )
    region = png(kather_mosaic(REGION))
    cases = {
        "tile (224 px)": run_case(engine, png(kather_mosaic((224, 224))), None, args.runs),
        "region 2048x1536 at 0.5 um/px": run_case(engine, region, 0.5, args.runs),
        "region 2048x1536 at 0.42 um/px": run_case(engine, region, 0.42, args.runs),
    }
    engine.close()
    print(
        f"{'query':34} {'tiles':>6} {'tissue':>7} {'total ms':>9} {'decode+tile':>12} "
        f"{'embed ms':>9} {'search ms':>10}"
    )
    for name, row in cases.items():
        print(
            f"{name:34} {row['query_tiles']:>6} {row['tissue_tiles']:>7} {row['total_ms']:>9} "
            f"{row['decode_and_tile_ms']:>12} {row['embed_ms']:>9} {row['search_ms']:>10}"
        )
    result = {
        "cases": cases,
        "items": 10_000,
        "k": SLIDE_POOL_K,
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": 1,
    }
    RESULTS.mkdir(exist_ok=True)
    write_result(RESULTS / "region_query.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
