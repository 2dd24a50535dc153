"""What the second stage adds to one query: re-ranking a shortlist read from memory-mapped codes.

    nice -n 10 python -m benchmarks.indexer.second_stage_latency [--items 10000000]
        [--dim 192] [--factors 10 30 100] [--out benchmarks/results/second_stage_latency.json]

Writes ``fine.<gen>.npy`` / ``fine-ids.<gen>.npy`` of ``--items`` random 8-bit codes with the
index's own writer (`indexer.index.fine_codes.FineCodes`), maps them as an index opens them,
and times the index's re-rank (`indexer.index.second_stage.rerank_shortlists`) of one query's
shortlist of ``factor x 10`` random ids, single thread, median over ``--queries`` queries. The
file was just written, so its pages are mostly in the page cache: a query on a cold cache pays
one random disk read per candidate on top. The compact stage's own time at this size is
`benchmarks/quality/features.py`'s (``--scale-items``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.common import RESULTS, write_result
from indexer.index.fine_codes import FineCodes
from indexer.index.manifest import Snapshot, fine_ids_name, fine_name
from indexer.index.second_stage import FineQuantiser, rerank_shortlists, unit_rows
from indexer.index.snapshot_files import file_entry

K = 10
_CHUNK = 1 << 20


def main() -> None:
    arguments = parse_arguments()
    faiss.omp_set_num_threads(1)
    generator = np.random.default_rng(0)
    quantiser = FineQuantiser.train(unit_rows(generator.standard_normal((20_000, arguments.dim))))
    with tempfile.TemporaryDirectory(dir=arguments.folder) as folder:
        directory = Path(folder)
        codes = mapped_codes(directory, arguments.items, arguments.dim, generator)
        queries = unit_rows(generator.standard_normal((arguments.queries, arguments.dim)))
        rows: list[dict[str, Any]] = []
        for factor in arguments.factors:
            shortlists = generator.integers(1, arguments.items + 1, (arguments.queries, factor * K))
            rows.append(
                {
                    "shortlist": factor * K,
                    "median_ms": median_ms(codes, quantiser, queries, shortlists),
                }
            )
            print(f"shortlist {factor * K:>5}: {rows[-1]['median_ms']:.3f} ms")
    report = {
        "benchmark": "second_stage_latency",
        "items": arguments.items,
        "dim": arguments.dim,
        "queries": arguments.queries,
        "threads": 1,
        "rows": rows,
    }
    write_result(arguments.out, report)
    print(f"wrote {arguments.out}")


def mapped_codes(directory: Path, items: int, dim: int, generator: Any) -> FineCodes:
    """``items`` random codes written and mapped as an index's snapshot generation 1."""
    codes_path, ids_path = directory / fine_name(1), directory / fine_ids_name(1)
    out = np.lib.format.open_memmap(codes_path, mode="w+", dtype=np.uint8, shape=(items, dim))
    for start in range(0, items, _CHUNK):
        count = min(_CHUNK, items - start)
        out[start : start + count] = generator.integers(0, 256, (count, dim), dtype=np.uint8)
    out.flush()
    del out
    np.save(ids_path, np.arange(1, items + 1, dtype=np.int64))
    empty = {"bytes": 0, "sha256": "0" * 64}
    snapshot = Snapshot.model_validate(
        {
            "generation": 1,
            "items": items,
            "last_item_id": items,
            "last_removal_seq": 0,
            "codes": empty,
            "columns": empty,
            "fine": file_entry(codes_path).model_dump(),
            "fine_ids": file_entry(ids_path).model_dump(),
        }
    )
    mapped = FineCodes(dim)
    mapped.load_generation(directory, snapshot)
    return mapped


def median_ms(codes: FineCodes, quantiser: FineQuantiser, queries: Any, shortlists: Any) -> float:
    times = []
    for query, shortlist in zip(queries, shortlists, strict=True):
        started = time.perf_counter()
        rerank_shortlists(query[None], shortlist[None], codes.codes_of, quantiser, K)
        times.append(time.perf_counter() - started)
    return float(1000 * np.median(times))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factors", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--folder", type=Path, default=None, help="where the files are written")
    parser.add_argument("--out", type=Path, default=RESULTS / "second_stage_latency.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
