"""Feature-archive reading: rows per second from an ``.npy`` + CSV and from per-slide files.

    nice python -m benchmarks.indexer.feature_reading [--slides 500] [--repeats 3]

The rows are real: ``tcga-hipt-regions-192d`` (147,503 HIPT region embeddings, 192-d float16,
from ``../shared/data`` or ``$HISTOSEARCH_SHARED_DATA``). Layouts measured:

- ``npy + csv``: ``regions.npy`` memory-mapped with ``regions.csv`` (label ``cancer_type``, group
  ``patient_id``), read in chunks, as ``--source features --data regions.npy`` would.
- ``h5 per slide`` / ``pt per slide``: the first ``--slides`` slides of the same rows written
  into a temporary folder, one file per slide, in the CLAM layout (h5: ``features`` float32 and
  ``coords`` with ``patch_size`` / ``patch_level`` attributes; pt: one tensor) with a
  ``manifest.csv``. The shared set keeps at most 24 regions a slide (18 on average), so these
  measure the per-file cost: a CLAM slide of 20x patches has thousands of rows.
- ``h5 large`` / ``pt large``: ``--large-files`` files of ``--rows-per-file`` consecutive rows
  each (slides pooled), the size of a real slide's patch features.

What is timed is `FeatureArchive.open` plus iterating every batch: listing, file fingerprints
(SHA-256), reading, checks (dtype, dimension, NaN/Inf), float32 conversion, one ``NewItem`` per
row with its content hash. Writing to an index is not included. Each layout is read ``--repeats``
times and the best wall time kept (the machine is shared); CPU seconds of the same run are shown
too. Results: a table on stdout and ``benchmarks/results/feature_reading.json``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from indexer.ingest.features import (
    FeatureArchive,
    FeatureBatch,
    FeatureColumns,
    FeatureOptions,
)

DATASET = "tcga-hipt-regions-192d"
COLUMNS = FeatureColumns(label="cancer_type", group="patient_id")
# Goals from the feature-archive issue, rows per second.
GOALS = {
    "npy + csv": 100_000,
    "h5 per slide": 10_000,
    "pt per slide": 10_000,
    "h5 large": 10_000,
    "pt large": 10_000,
}


def read_rows(data: Path, options: FeatureOptions) -> tuple[int, int, float, float]:
    """Open and read the whole archive: (rows read, files refused, wall s, CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = refused = 0
    for outcome in FeatureArchive.open(data, options).batches():
        if isinstance(outcome, FeatureBatch):
            rows += len(outcome.rows)
        else:
            refused += 1
    return rows, refused, time.perf_counter() - wall, time.process_time() - cpu


def slide_runs(slide_ids: Sequence[str], count: int) -> list[tuple[str, int, int]]:
    """(slide id, first row, end row) of the first ``count`` slides (rows of a slide are
    contiguous in the shared set)."""
    runs: list[tuple[str, int, int]] = []
    start = 0
    for row in range(1, len(slide_ids) + 1):
        if row == len(slide_ids) or slide_ids[row] != slide_ids[start]:
            runs.append((slide_ids[start], start, row))
            start = row
            if len(runs) == count:
                break
    return runs


def pooled_runs(rows_per_file: int, count: int) -> list[tuple[str, int, int]]:
    """``count`` files of ``rows_per_file`` consecutive rows each."""
    return [(f"pooled-{n:04d}", n * rows_per_file, (n + 1) * rows_per_file) for n in range(count)]


def write_slides(
    folder: Path,
    matrix: np.ndarray,
    table: list[dict[str, str]],
    runs: list[tuple[str, int, int]],
    kind: str,
) -> int:
    """One file per run of rows (``kind`` h5 or pt) and a manifest; returns the rows written."""
    folder.mkdir(parents=True)
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "cancer_type", "patient_id"])
        for slide, start, _ in runs:
            writer.writerow([slide, table[start]["cancer_type"], table[start]["patient_id"]])
    for slide, start, end in runs:
        rows = np.asarray(matrix[start:end], dtype=np.float32)
        if kind == "pt":
            torch.save(torch.from_numpy(rows), folder / f"{slide}.pt")
            continue
        with h5py.File(folder / f"{slide}.h5", "w") as handle:
            handle.create_dataset("features", data=rows)
            coords = np.stack([np.arange(len(rows)) * 4096, np.zeros(len(rows))], axis=1)
            dataset = handle.create_dataset("coords", data=coords.astype(np.int64))
            dataset.attrs["patch_size"] = 4096
            dataset.attrs["patch_level"] = 0
    return sum(end - start for _, start, end in runs)


def best_of(data: Path, options: FeatureOptions, repeats: int) -> dict[str, Any]:
    runs = [read_rows(data, options) for _ in range(repeats)]
    rows, refused, wall, cpu = min(runs, key=lambda run: run[2])
    return {
        "rows": rows,
        "refused_files": refused,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "rows_per_s": round(rows / wall),
        "rows_per_cpu_s": round(rows / cpu) if cpu else None,
    }


def run(
    slides: int, large_files: int, rows_per_file: int, repeats: int, output: Path
) -> dict[str, Any]:
    matrix_path = shared_data_root() / DATASET / "regions.npy"
    options = FeatureOptions(columns=COLUMNS)
    measured: dict[str, dict[str, Any]] = {"npy + csv": best_of(matrix_path, options, repeats)}
    matrix = np.load(matrix_path, mmap_mode="r")
    with matrix_path.with_suffix(".csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    layouts = {
        "per slide": slide_runs([line["slide_id"] for line in table], slides),
        "large": pooled_runs(rows_per_file, large_files),
    }
    with tempfile.TemporaryDirectory() as temporary:
        for name, runs in layouts.items():
            for kind in ("h5", "pt"):
                folder = Path(temporary) / f"{kind}_{name.replace(' ', '_')}"
                write_slides(folder, matrix, table, runs, kind)
                numbers = best_of(folder, options, repeats)
                measured[f"{kind} {name}"] = numbers | {"files": len(runs)}
    result = {
        "benchmark": "feature_reading",
        "dataset": DATASET,
        "repeats": repeats,
        "slides": slides,
        "large_files": large_files,
        "rows_per_file": rows_per_file,
        "layouts": measured,
        "goals_rows_per_s": GOALS,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "torch": torch.__version__,
    }
    print_table(measured)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_result(output, result)
    return result


def print_table(measured: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'layout':<14} {'rows':>8} {'wall s':>8} {'CPU s':>8} {'rows/s':>10} {'rows/CPU s':>11}"
        f" {'goal':>8}"
    )
    for layout, numbers in measured.items():
        print(
            f"{layout:<14} {numbers['rows']:>8} {numbers['wall_s']:>8.3f} {numbers['cpu_s']:>8.3f}"
            f" {numbers['rows_per_s']:>10} {numbers['rows_per_cpu_s']:>11} {GOALS[layout]:>8}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slides", type=int, default=500, help="slides written as files")
    parser.add_argument("--large-files", type=int, default=25, help="files of many rows")
    parser.add_argument("--rows-per-file", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "feature_reading.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(args.slides, args.large_files, args.rows_per_file, args.repeats, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
