"""Indexing rate of a feature archive: rows per second of `histosearch index --source features`.

    nice python -m benchmarks.indexer.feature_indexing [--threads 1] [--slides 500]

The rows are real: ``regions.npy`` of ``tcga-hipt-regions-192d`` (147,503 HIPT region
embeddings, 192-d float16) with ``regions.csv``. The goal is 100,000 rows per second end to end.
Stages, each timed alone (wall and CPU seconds; the machine is shared, so CPU seconds say what the
code costs and wall seconds what a user waited):

- ``read``: `indexer.ingest.features.FeatureArchive` batches (fingerprint, float32, checks, the
  rows' columns);
- ``encode``: `model.feature_encoder.FeatureEncoder` descriptors of every row (the feature
  model: centring, linear head; weights do not change the cost);
- ``end to end``: `indexer.ingest.feature_index.index_feature_archive` into a new index
  (reading, encoding, the ingest writer's SQLite row blocks, codes and journal, the final
  snapshot);
- ``end to end h5 per slide`` / ``pt per slide``: the same into a new index from the first
  ``--slides`` slides of the same rows written one file per slide in the CLAM layout
  (`benchmarks.indexer.feature_reading.write_slides`; 18 rows a slide on average, so these
  measure what each file costs: its fingerprint, read, and its rows' commit and journal entry).

Results: a table on stdout and ``benchmarks/results/feature_indexing.json``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from benchmarks.indexer.feature_reading import slide_runs, write_slides
from indexer.index.store import ArchiveIndex
from indexer.ingest.feature_index import index_feature_archive
from indexer.ingest.feature_table import TCGA_COLUMNS
from indexer.ingest.features import FeatureArchive, FeatureBatch, FeatureOptions
from indexer.ingest.writer import PipelineConfig
from indexer.learn.feature_config import FeatureTrainConfig
from indexer.learn.feature_training import feature_card
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel, save_feature_checkpoint

GOAL_ROWS_PER_SECOND = 100_000


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)
    data = arguments.data / "regions.npy"
    model = feature_model()
    options = FeatureOptions(columns=TCGA_COLUMNS, dim=model.card.input_dim)
    encoder = FeatureEncoder(model, torch.device("cpu"))
    rows: list[dict[str, Any]] = []

    def read() -> int:
        return sum(
            len(batch.rows)
            for batch in FeatureArchive.open(data, options).batches()
            if isinstance(batch, FeatureBatch)
        )

    rows.append(timed("read", read))
    vectors = np.load(data).astype(np.float32)
    rows.append(timed("encode", lambda: len(encoder.descriptors(vectors))))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        save_feature_checkpoint(model, folder / "model.pt")
        rows.append(timed("end to end", indexing(data, options, encoder, folder / "npy")))
        slides = per_slide_folders(data, folder, arguments.slides)
        for kind, archive in slides.items():
            run = indexing(archive, options, encoder, folder / f"index-{kind}")
            rows.append(timed(f"end to end {kind} per slide", run))
    for row in rows:
        print(
            f"{row['stage']:<24} {row['rows']:>7} rows  wall {row['wall_s']:6.2f} s "
            f"({row['rows_per_s_wall']:>9,.0f}/s)  cpu {row['cpu_s']:6.2f} s "
            f"({row['rows_per_s_cpu']:>9,.0f}/s)"
        )
    out = write_result(
        arguments.out,
        {
            "benchmark": "feature_indexing",
            "data": "tcga-hipt-regions-192d/regions.npy",
            "goal_rows_per_s": GOAL_ROWS_PER_SECOND,
            "threads": arguments.threads,
            "slides": arguments.slides,
            "stages": rows,
        },
    )
    print(f"wrote {out}")


def indexing(
    data: Path, options: FeatureOptions, encoder: FeatureEncoder, directory: Path
) -> Callable[[], int]:
    """A run of `histosearch index --source features` into a new index: rows added."""

    def run() -> int:
        index = ArchiveIndex.create(directory, directory.parent / "model.pt")
        with index:
            summary = index_feature_archive(
                FeatureArchive.open(data, options),
                index,
                encoder,
                PipelineConfig(batch_size=16_384, progress=False),
            )
        return summary.counts.tiles_added

    return run


def per_slide_folders(data: Path, folder: Path, slides: int) -> dict[str, Path]:
    """The first ``slides`` slides of ``data`` as a folder of ``.h5`` and one of ``.pt`` files."""
    matrix = np.load(data, mmap_mode="r")
    with data.with_suffix(".csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    runs = slide_runs([line["slide_id"] for line in table], slides)
    folders = {kind: folder / f"{kind}-per-slide" for kind in ("h5", "pt")}
    for kind, target in folders.items():
        write_slides(target, matrix, table, runs, kind)
    return folders


def feature_model(codebook_size: int = 256) -> FeatureSPQModel:
    """The feature model `histosearch train --source features` makes by default for 192-d rows
    (`indexer.learn.feature_config`: 64 bits, 8 codebooks of 256 codewords, a linear head), with
    random weights: the cost of indexing does not depend on them."""
    torch.manual_seed(0)
    config = FeatureTrainConfig(feature_model="hipt", codebook_size=codebook_size)
    card = feature_card(config, input_dim=192)
    return FeatureSPQModel(card).eval()


def timed(stage: str, work: Callable[[], int]) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    rows = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "stage": stage,
        "rows": rows,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "rows_per_s_wall": rows / wall,
        "rows_per_s_cpu": rows / cpu if cpu > 0 else None,
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=shared_data_root() / "tcga-hipt-regions-192d",
        help="folder with regions.npy and regions.csv",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument(
        "--slides", type=int, default=500, help="slides written one file each (default: 500)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "feature_indexing.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
