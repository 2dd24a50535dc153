"""Indexer goals in one table: search cost against raw FAISS, encoding speed, memory, start-up.

    nice python -m benchmarks.indexer.goals [--sizes 10000 100000 1000000] [--queries 500]

Runs `benchmarks.indexer.index_scale` (search latency, RAM per item, start-up; its own detailed
table) and `benchmarks.indexer.encoding` (real tiles through the whole pipeline; its own table),
then prints every goal of the archive indexer with the measured value and whether it was met.
Results: ``benchmarks/results/indexer.json`` (plus the two scripts' own JSON files).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result
from benchmarks.indexer import encoding, index_scale

MAX_SEARCH_OVER_FAISS = 1.1
MIN_ENCODING_OVER_FORWARD = 0.8
MAX_BYTES_PER_ITEM = 64
MAX_READY_SECONDS = 2.0
MEMORY_AND_STARTUP_SIZE = 1_000_000


@dataclass(frozen=True, slots=True)
class Goal:
    """One line of the table: what is measured, the target, the value and the verdict."""

    what: str
    target: str
    measured: float
    met: bool


def search_goals(rows: Sequence[dict[str, Any]], queries: int) -> list[Goal]:
    goals = []
    for row in rows:
        size = f"{row['items']:,} items"
        for key, calls in (("batch", f"{queries} queries per call"), ("single", "one per call")):
            ratio = row[f"ratio_vs_refine_{key}"]
            goals.append(
                Goal(
                    f"search / raw FAISS re-rank, {calls}, {size}",
                    f"<= {MAX_SEARCH_OVER_FAISS}x",
                    round(ratio, 3),
                    ratio <= MAX_SEARCH_OVER_FAISS,
                )
            )
    return goals


def footprint_goals(rows: Sequence[dict[str, Any]]) -> list[Goal]:
    """RAM per item and start-up, at 1M items when measured, else at the largest size."""
    row = max(rows, key=lambda r: r["items"])
    size = f"{row['items']:,} items"
    startup = row["startup"]
    return [
        Goal(
            f"RAM per item (codes, ids, filters), {size}",
            f"<= {MAX_BYTES_PER_ITEM} B",
            round(startup["rss_bytes_per_item"], 1),
            startup["rss_bytes_per_item"] <= MAX_BYTES_PER_ITEM,
        ),
        Goal(
            f"process start to first answer, {size}",
            f"<= {MAX_READY_SECONDS} s",
            round(startup["process_start_to_ready_s"], 2),
            startup["process_start_to_ready_s"] <= MAX_READY_SECONDS,
        ),
    ]


def encoding_goal(result: dict[str, Any], card: str) -> Goal:
    ratio = result["pipeline_over_bare"]
    return Goal(
        f"encoding pipeline / bare forward, {result['images']} real tiles, {card}",
        f">= {MIN_ENCODING_OVER_FORWARD}x",
        round(ratio, 3),
        ratio >= MIN_ENCODING_OVER_FORWARD,
    )


def print_goals(goals: Sequence[Goal]) -> None:
    width = max(len(goal.what) for goal in goals)
    print(f"{'goal':<{width}} | {'target':>9} | {'measured':>8} | met")
    print("-" * (width + 30))
    for goal in goals:
        verdict = "yes" if goal.met else "NO"
        print(f"{goal.what:<{width}} | {goal.target:>9} | {goal.measured:>8} | {verdict}")


def run(sizes: Sequence[int], queries: int, output: Path) -> list[Goal]:
    rows = index_scale.run(sizes, queries, 10, RESULTS / "index_scale.json")
    print()
    encoded = encoding.run(240, 3, 64, RESULTS / "encoding.json")
    # The same pipeline under a 224 px model: about 12x the forward FLOPs per tile.
    encoded_224 = encoding.run(240, 3, 64, RESULTS / "encoding-224px.json", input_size=224)
    print()
    goals = [
        *search_goals(rows, queries),
        *footprint_goals(rows),
        encoding_goal(encoded, "default 64 px model"),
        encoding_goal(encoded_224, "224 px model"),
    ]
    if MEMORY_AND_STARTUP_SIZE not in sizes:
        print(f"(memory and start-up goals are for {MEMORY_AND_STARTUP_SIZE:,} items)")
    print_goals(goals)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_result(output, {"goals": [asdict(goal) for goal in goals]})
    return goals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, MEMORY_AND_STARTUP_SIZE]
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--output", type=Path, default=RESULTS / "indexer.json")
    args = parser.parse_args(argv)
    run(args.sizes, args.queries, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
