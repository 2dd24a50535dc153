"""How long a shortlist the second stage needs (tcga-hipt-regions-192d, validation patients).

    nice -n 10 python -m benchmarks.quality.second_stage [--bits 32 64 128]
        [--factors 10 30 100] [--queries 2000] [--out benchmarks/results/second_stage.json]

The split of `benchmarks.quality.features` (patients, seed 0: 70/15/15); queries are regions of
validation patients, the archive the training patients' regions, so settings are chosen without
the test patients. Per code length: SPQ trained on the training patients with the chosen
settings, its ADC shortlist of ``factor x 10`` re-ranked by the index's own second stage
(`indexer.index.second_stage`: the same `FineQuantiser`, trained as an index trains it on its
first batch of rows, and `rerank_shortlists`). Columns: P@10 and its share of the float P@10,
recall of the float top 10, and the re-rank's median time per query (one thread).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from benchmarks.common import RESULTS, write_result
from benchmarks.quality.features import CHOSEN, DATA, SPLIT_SEED
from indexer.evaluate.features import (
    IntArray,
    Quality,
    centre_and_normalise,
    exact_ranking,
    load_region_archive,
    model_codes,
    model_descriptors,
    query_archive_split,
    ranking_quality,
    spq_index,
)
from indexer.index.second_stage import FineQuantiser, rerank_shortlists
from indexer.learn.feature_training import FeatureTrainConfig, patient_split, train_on_features

K = 10
# An index trains its quantiser on its first batch of rows (`histosearch index` reads 16384).
FIRST_BATCH = 16_384


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    data = load_region_archive(arguments.data, arguments.limit)
    split = patient_split(list(data.groups), 0.15, 0.15, SPLIT_SEED)
    rows = query_archive_split(data, split, "validation", arguments.queries, seed=0)
    train = data.subset(data.rows_of(split.train))
    mean = train.vectors.mean(axis=0)
    archive, queries = data.vectors[rows.archive], data.vectors[rows.queries]
    unit_archive = centre_and_normalise(archive, mean)
    unit_queries = centre_and_normalise(queries, mean)
    labels, archive_labels = data.labels[rows.queries], data.labels[rows.archive]
    truth = exact_ranking(unit_queries, unit_archive, K)

    def quality(ranked: IntArray) -> Quality:
        return ranking_quality(ranked, labels, archive_labels, truth)

    float_quality = quality(truth)
    quantiser = FineQuantiser.train(unit_archive[:FIRST_BATCH])
    fine_codes = quantiser.encode(unit_archive)
    results: list[dict[str, Any]] = [row("float exact", 0, 0, float_quality, float_quality, 0.0)]
    print_row(results[-1])
    for bits in arguments.bits:
        config = FeatureTrainConfig(bits=bits, threads=1, feature_model="hipt", **CHOSEN[bits])
        model = train_on_features(train.vectors, list(train.slides), config).model
        index = spq_index(model, model_codes(model, archive))
        _, shortlist = index.search(model_descriptors(model, queries), max(arguments.factors) * K)
        shortlist = shortlist.astype(np.int64)
        results.append(row("SPQ codes", bits, 0, quality(shortlist), float_quality, 0.0))
        print_row(results[-1])
        for factor in arguments.factors:
            started = time.perf_counter()
            _, ranked = rerank_shortlists(
                unit_queries, shortlist[:, : factor * K], lambda ids: fine_codes[ids], quantiser, K
            )
            per_query_ms = 1000 * (time.perf_counter() - started) / len(queries)
            results.append(
                row("SPQ + SQ8 re-rank", bits, factor, quality(ranked), float_quality, per_query_ms)
            )
            print_row(results[-1])
    report = {
        "benchmark": "second_stage",
        "data": str(arguments.data.name),
        "part": "validation",
        "queries": len(rows.queries),
        "archive_items": len(rows.archive),
        "quantiser_trained_on": min(FIRST_BATCH, len(unit_archive)),
        "rows": results,
    }
    write_result(arguments.out, report)
    print(f"wrote {arguments.out}")


def row(
    method: str, bits: int, factor: int, quality: Quality, reference: Quality, rerank_ms: float
) -> dict[str, Any]:
    return {
        "method": method,
        "bits": bits,
        "shortlist_factor": factor,
        **quality.as_dict(),
        "share_of_float_p_at_10": quality.precision_at_10 / reference.precision_at_10,
        "rerank_ms_per_query": rerank_ms,
    }


def print_row(result: dict[str, Any]) -> None:
    print(
        f"{result['method']:<20} {result['bits']:>4} bits  "
        f"shortlist {result['shortlist_factor']:>3} x k  P@10 {result['p_at_10']:.4f} "
        f"({100 * result['share_of_float_p_at_10']:5.1f}%)"
        f"  R@10 {result['float_recall_at_10']:.3f}"
        f"  re-rank {result['rerank_ms_per_query']:.3f} ms",
        flush=True,
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="first rows only (smoke runs)")
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--factors", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--queries", type=int, default=2000, help="validation regions queried")
    parser.add_argument("--out", type=Path, default=RESULTS / "second_stage.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
