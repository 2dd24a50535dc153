"""What slide and case search costs on an index: reading its slides, and one slide query.

    nice -n 10 python -m benchmarks.indexer.slide_catalog [--items 147503] [--slide-items 24]
        [--queries 20] [--codebook-size 16] [--codeword-dim 8] [--threads 2] [--out FILE]

An `ArchiveIndex` of ``--items`` seeded synthetic codes (8 codebooks of 16 codewords of 8
dimensions by default: 32-bit codes of 64-d descriptors, searched by FAISS FastScan;
``--codebook-size 256 --codeword-dim 24`` gives the 64-bit codes of 192-d descriptors that a
feature index of the shared HIPT regions holds by default, searched by a flat 8-bit `IndexPQ`)
in slides of ``--slide-items`` items (``extra.slide_id``), five slides a patient. Times:

- the cold read of the index's slides (`IndexSlides.of_index`: one SQL read of every item's code,
  group and slide id, the catalog, the slide means from codeword histograms and their codes),
  what the first slide query of a process pays, and again after a change;
- the cache's check that nothing changed (`SlideArchiveCache.current`), what every later query
  pays;
- one slide query per aggregation (k = 10, 3 evidence items, the index's own ADC item search),
  median over ``--queries`` slides, wall-clock and CPU time of the process (all threads: on a
  machine shared with other work the CPU time is the steadier figure).

Results: a table on stdout and ``benchmarks/results/slide_catalog.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.common import RESULTS, write_result
from indexer.index.records import NewItem
from indexer.index.slide_archive import (
    IndexSlides,
    SlideArchiveCache,
    SlideSearchRequest,
    search_slides,
)
from indexer.index.slide_search import Aggregation
from indexer.index.store import ArchiveIndex

M = 8
SLIDES_PER_PATIENT = 5
ADD_CHUNK = 50_000


def build(
    directory: Path, items: int, slide_items: int, codebook_size: int, codeword_dim: int
) -> ArchiveIndex:
    rng = np.random.default_rng(0)
    codebooks = rng.standard_normal((M, codebook_size, codeword_dim)).astype(np.float32)
    codebooks /= np.linalg.norm(codebooks, axis=2, keepdims=True)
    index = ArchiveIndex.create_from_codebooks(
        directory, codebooks, card={"backbone": "synthetic", "num_codebooks": M}
    )
    # Items of a slide share a few codewords (slides differ), so searches rank something.
    slides = (items + slide_items - 1) // slide_items
    slide_codes = rng.integers(0, codebook_size, (slides, M))
    for start in range(0, items, ADD_CHUNK):
        rows = np.arange(start, min(items, start + ADD_CHUNK))
        slide = rows // slide_items
        codes = slide_codes[slide].copy()
        noise = rng.random(codes.shape) < 0.4
        codes[noise] = rng.integers(0, codebook_size, int(noise.sum()))
        records = [
            NewItem(
                source=f"slide-{s}.h5",
                content_hash=f"item-{row}",
                group=f"patient-{s // SLIDES_PER_PATIENT}",
                extra={"slide_id": f"slide-{s}", "row": int(row % slide_items)},
            )
            for row, s in zip(rows.tolist(), slide.tolist(), strict=True)
        ]
        index.add_codes(codes.astype(np.uint8), records)
    return index


def timed(function: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return (time.perf_counter() - start) * 1000.0, value


def measure(index: ArchiveIndex, queries: int) -> dict[str, Any]:
    cold_ms, slides = timed(lambda: IndexSlides.of_index(index))
    cache = SlideArchiveCache(index)
    cache.current()
    check_ms = float(np.median([timed(cache.current)[0] for _ in range(20)]))
    names = slides.catalog.slide_ids
    chosen = np.random.default_rng(1).choice(len(names), min(queries, len(names)), replace=False)
    per_aggregation: dict[str, float] = {}
    cpu_per_aggregation: dict[str, float] = {}
    for aggregation in Aggregation:
        times, cpu_times = [], []
        for position in chosen.tolist():
            request = SlideSearchRequest(slide_id=names[position], aggregation=aggregation)
            cpu_started = time.process_time()
            times.append(timed(lambda r=request: search_slides(slides, index, r, 10))[0])
            cpu_times.append((time.process_time() - cpu_started) * 1000.0)
        per_aggregation[aggregation.value] = round(float(np.median(times)), 2)
        cpu_per_aggregation[aggregation.value] = round(float(np.median(cpu_times)), 2)
    return {
        "items": len(slides.catalog.item_ids),
        "slides": len(names),
        "patients": len(slides.catalog.groups),
        "cold_read_ms": round(cold_ms, 1),
        "unchanged_check_ms": round(check_ms, 3),
        "slide_query_ms": per_aggregation,
        # CPU time of the process (every thread) per query: what the work costs, whatever the
        # load of others on a shared machine does to the wall-clock figure.
        "slide_query_cpu_ms": cpu_per_aggregation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=147_503)
    parser.add_argument("--slide-items", type=int, default=24)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--codebook-size", type=int, choices=(16, 256), default=16)
    parser.add_argument("--codeword-dim", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "slide_catalog.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="slide-catalog-") as workdir:
        start = time.perf_counter()
        directory = Path(workdir) / "index"
        with build(
            directory, args.items, args.slide_items, args.codebook_size, args.codeword_dim
        ) as index:
            build_s = time.perf_counter() - start
            figures = measure(index, args.queries)
    figures |= {
        "build_s": round(build_s, 1),
        "machine": platform.machine(),
        "load_average_at_end": list(os.getloadavg()),
    }
    print(f"{figures['items']:,} items, {figures['slides']:,} slides, "
          f"{figures['patients']:,} patients")  # fmt: skip
    print(f"cold read of the index's slides: {figures['cold_read_ms']:.0f} ms")
    print(f"unchanged check per query:       {figures['unchanged_check_ms']:.2f} ms")
    for name, ms in figures["slide_query_ms"].items():
        cpu = figures["slide_query_cpu_ms"][name]
        print(f"slide query, {name:<11}      {ms:.1f} ms (median), CPU {cpu:.1f} ms")
    settings = {name: value for name, value in vars(args).items() if name != "out"}
    write_result(args.out, {"settings": settings, **figures})


if __name__ == "__main__":
    main()
