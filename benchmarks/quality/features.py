"""What compact codes keep of a pathology foundation model's features (tcga-hipt-regions-192d).

    nice python -m benchmarks.quality.features [--part test] [--bits 32 64 128] [--queries 2000]
        [--scale-items 10000000] [--out benchmarks/results/features.json]

Patients are split once (seed 0: 70% train, 15% validation, 15% test, by `patient_split`).
Every learned thing (FAISS PQ / OPQ codebooks, LanceDB's IVF-PQ, the SPQ head and codebooks,
the centring mean) is fitted on training patients only. Queries are regions of held-out patients
(``--part validation`` while choosing settings, ``test`` once at the end); the archive is every
region of the other parts (train for validation, train + validation for test), so no query meets
its own patient. Relevance: same cancer type. Float = exact cosine on the centred vectors.

Rows per code length: FAISS IndexPQ and OPQ (k-means codebooks, 4- and 8-bit codewords),
LanceDB IVF-PQ (256 cells + 8-bit PQ of the residual, all cells searched), SPQ codes, and SPQ
with the second stage (the SPQ shortlist of 10 x k re-ranked by 8-bit scalar-quantised float
vectors kept on disk). Columns: P@10, its share of float P@10, mAP@10, MV@5, recall of the float
top 10, bytes per item in RAM and on disk, training time, encoding rate (single thread).

Latency: one query, single thread, median over queries, at the archive's size and at
``--scale-items`` (the real vectors resampled with Gaussian noise of 10% of each dimension's
spread: a synthetic archive with the real distribution), for FAISS's own IndexPQ search over
FAISS-trained codes, the same search over the SPQ codes, and the second stage's re-rank of a
shortlist of 100 read from a memory-mapped file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from indexer.evaluate.features import (
    FeatureArchive,
    FloatArray,
    IntArray,
    Quality,
    centre_and_normalise,
    exact_ranking,
    faiss_pq_index,
    index_ranking,
    lancedb_ranking,
    load_region_archive,
    model_codes,
    model_descriptors,
    query_archive_split,
    ranking_quality,
    rerank,
    spq_index,
)
from indexer.index.second_stage import FineQuantiser
from indexer.learn.feature_training import FeatureTrainConfig, patient_split, train_on_features
from model.feature_spq import FeatureSPQModel

DATA = shared_data_root() / "tcga-hipt-regions-192d"
SPLIT_SEED = 0
SHORTLIST = 100  # 10 x k for k = 10
# The SPQ settings per code length, chosen on validation patients (see docs/features.md).
CHOSEN: dict[int, dict[str, Any]] = {
    32: {"codebook_size": 256, "signal": "slide", "epochs": 2},
    64: {"codebook_size": 256, "signal": "slide+neighbours", "epochs": 2},
    128: {"codebook_size": 256, "signal": "slide+neighbours", "epochs": 2},
}


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)
    faiss.omp_set_num_threads(arguments.threads)
    data = load_region_archive(arguments.data, arguments.limit)
    split = patient_split(list(data.groups), 0.15, 0.15, SPLIT_SEED)
    rows = query_archive_split(data, split, arguments.part, arguments.queries, seed=0)
    train = data.subset(data.rows_of(split.train))
    mean = train.vectors.mean(axis=0)
    unit_train = centre_and_normalise(train.vectors, mean)
    archive, queries = data.vectors[rows.archive], data.vectors[rows.queries]
    unit_archive, unit_queries = (
        centre_and_normalise(archive, mean),
        centre_and_normalise(queries, mean),
    )
    labels, archive_labels = data.labels[rows.queries], data.labels[rows.archive]
    truth = exact_ranking(unit_queries, unit_archive, SHORTLIST)

    def quality(ranked: IntArray) -> Quality:
        return ranking_quality(ranked, labels, archive_labels, truth)

    float_quality = quality(truth)
    results: list[dict[str, Any]] = [
        row("float exact", 0, float_quality, float_quality, ram=4 * data.vectors.shape[1])
    ]
    print_row(results[0])
    models: dict[int, FeatureSPQModel] = {}
    for bits in arguments.bits if arguments.quality else []:
        results.extend(
            baseline_rows(
                bits, arguments, unit_train, unit_archive, unit_queries, quality, float_quality
            )
        )
        model, rows_of_spq = spq_rows(
            bits,
            arguments,
            train,
            archive,
            queries,
            unit_train,
            unit_archive,
            unit_queries,
            quality,
            float_quality,
        )
        models[bits] = model
        results.extend(rows_of_spq)
    model = models.get(arguments.scale_bits) or train_spq(arguments.scale_bits, arguments, train)[0]
    scale = scale_timings(arguments, data, split, model, mean, unit_train)
    report = {
        "benchmark": "features",
        "data": str(arguments.data.name),
        "part": arguments.part,
        "queries": len(rows.queries),
        "archive_items": len(rows.archive),
        "training_items": len(train),
        "split": {"seed": SPLIT_SEED, "validation": 0.15, "test": 0.15, "by": "patient_id"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "threads": arguments.threads,
        },
        "rows": results,
        "latency": scale,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(arguments.out, report)
    print(f"wrote {arguments.out}")


def baseline_rows(
    bits: int,
    arguments: argparse.Namespace,
    unit_train: FloatArray,
    unit_archive: FloatArray,
    unit_queries: FloatArray,
    quality: Callable[[IntArray], Quality],
    float_quality: Quality,
) -> list[dict[str, Any]]:
    """FAISS PQ and OPQ at 4- and 8-bit codewords, and LanceDB's IVF-PQ, at ``bits``."""
    results = []
    for nbits in (4, 8):
        for rotate in (False, True):
            name = f"FAISS {'OPQ' if rotate else 'PQ'} {nbits}-bit"
            started = time.perf_counter()
            index = faiss_pq_index(
                opq_sample(unit_train, rotate, arguments.opq_sample), bits, nbits, rotate
            )
            seconds = time.perf_counter() - started
            ranked = index_ranking(index, unit_archive, unit_queries, SHORTLIST)
            results.append(
                row(name, bits, quality(ranked), float_quality, ram=bits // 8, train_s=seconds)
            )
            print_row(results[-1])
    if arguments.lancedb:
        started = time.perf_counter()
        ranked = lancedb_ranking(unit_archive, unit_queries, bits, 10)
        results.append(
            row(
                "LanceDB IVF-PQ 256 cells",
                bits,
                quality(ranked),
                float_quality,
                ram=bits // 8,
                train_s=time.perf_counter() - started,
                note="time is index build + all queries; the cell is not counted in the bits",
            )
        )
        print_row(results[-1])
    return results


def train_spq(
    bits: int, arguments: argparse.Namespace, train: FeatureArchive
) -> tuple[FeatureSPQModel, float, dict[str, Any], FeatureTrainConfig]:
    settings = {**CHOSEN[bits], **json.loads(arguments.spq)}
    config = FeatureTrainConfig(
        bits=bits, threads=arguments.threads, feature_model="hipt", **settings
    )
    trained = train_on_features(train.vectors, list(train.slides), config)
    return trained.model, trained.seconds, settings, config


def opq_sample(unit_train: FloatArray, rotate: bool, size: int) -> FloatArray:
    """OPQ (rotation and codebooks) is trained on ``size`` rows drawn from the training rows:
    its alternating optimisation took 4-7 minutes per code length on 5-20k rows on the shared
    2 cores; PQ sees every training row (FAISS samples 256 per centroid itself)."""
    if not rotate or len(unit_train) <= size:
        return unit_train
    picks = np.random.default_rng(0).choice(len(unit_train), size, replace=False)
    return unit_train[np.sort(picks)]


def spq_rows(
    bits: int,
    arguments: argparse.Namespace,
    train: FeatureArchive,
    archive: FloatArray,
    queries: FloatArray,
    unit_train: FloatArray,
    unit_archive: FloatArray,
    unit_queries: FloatArray,
    quality: Callable[[IntArray], Quality],
    float_quality: Quality,
) -> tuple[FeatureSPQModel, list[dict[str, Any]]]:
    model, seconds, settings, config = train_spq(bits, arguments, train)
    started = time.perf_counter()
    codes = model_codes(model, archive)
    encode_rate = len(archive) / (time.perf_counter() - started)
    index = spq_index(model, codes)
    _, ranked = index.search(model_descriptors(model, queries), SHORTLIST)
    name = f"SPQ {config.codebook_size.bit_length() - 1}-bit {config.signal}"
    compact = row(
        name,
        bits,
        quality(ranked.astype(np.int64)),
        float_quality,
        ram=bits // 8,
        train_s=seconds,
        encode_per_s=encode_rate,
        settings=settings,
    )
    print_row(compact)
    fine = FineQuantiser.train(unit_train)
    reranked = rerank(unit_queries, ranked.astype(np.int64), fine.encode(unit_archive), fine)
    second = row(
        f"{name} + 2nd stage (SQ8 re-rank of {SHORTLIST})",
        bits,
        quality(reranked),
        float_quality,
        ram=bits // 8,
        disk=bits // 8 + unit_archive.shape[1],
        train_s=seconds,
        settings=settings,
    )
    print_row(second)
    return model, [compact, second]


def row(
    name: str,
    bits: int,
    quality: Quality,
    float_quality: Quality,
    ram: int,
    disk: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "method": name,
        "bits": bits,
        **quality.as_dict(),
        "share_of_float_p_at_10": quality.precision_at_10 / float_quality.precision_at_10,
        "ram_bytes_per_item": ram,
        "disk_bytes_per_item": ram if disk is None else disk,
        **extra,
    }


def print_row(result: dict[str, Any]) -> None:
    train = result.get("train_s")
    rate = result.get("encode_per_s")
    print(
        f"{result['method']:<48} {result['bits']:>4} P@10 {result['p_at_10']:.4f} "
        f"({100 * result['share_of_float_p_at_10']:5.1f}%) mAP@10 {result['map_at_10']:.4f} "
        f"MV@5 {result['mv_at_5']:.4f} R@10 {result['float_recall_at_10']:.3f} "
        f"RAM {result['ram_bytes_per_item']:>3} B disk {result['disk_bytes_per_item']:>3} B"
        + (f" train {train:.0f}s" if train is not None else "")
        + (f" encode {rate:,.0f}/s" if rate is not None else ""),
        flush=True,
    )


def resampled(data: FeatureArchive, count: int, seed: int) -> FloatArray:
    """``count`` rows drawn from the real vectors with Gaussian noise of 10% of each dimension's
    standard deviation: a synthetic archive with the real vectors' distribution."""
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(data), count)
    spread = data.vectors.std(axis=0)
    noise = generator.standard_normal((count, data.vectors.shape[1]), dtype=np.float32)
    rows: FloatArray = data.vectors[picks] + 0.1 * spread * noise
    return rows


def median_one_query_ms(
    searches: dict[str, tuple[Callable[[FloatArray], object], FloatArray]],
) -> dict[str, float]:
    """Median milliseconds of one query for each named (search, queries), the methods taking
    turns query by query, so that a shared machine's load falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in searches}
    count = min(len(queries) for _, queries in searches.values())
    for position in range(count):
        for name, (search, queries) in searches.items():
            started = time.perf_counter()
            search(queries[position][None, :])
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * float(np.median(values)) for name, values in times.items()}


def scale_timings(
    arguments: argparse.Namespace,
    data: FeatureArchive,
    split: Any,
    model: FeatureSPQModel,
    mean: FloatArray,
    unit_train: FloatArray,
) -> list[dict[str, Any]]:
    """One-query latency of FAISS's IndexPQ over its own codes and over SPQ codes, and of the
    second stage's re-rank, at the real archive's size and at ``--scale-items``."""
    bits = model.card.bits
    faiss_pq = faiss_pq_index(unit_train, bits, 8, rotate=False)
    fine = FineQuantiser.train(unit_train)
    probe = centre_and_normalise(data.vectors[data.rows_of(split.test)][:100], mean)
    probe_raw = data.vectors[data.rows_of(split.test)][:100]
    timings = []
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    for items in (len(data), arguments.scale_items):
        if items <= 0:
            continue
        source = "real" if items == len(data) else "real resampled with 10% noise"
        timings.append(
            time_one_size(
                items,
                source,
                data,
                model,
                faiss_pq,
                fine,
                mean,
                probe,
                probe_raw,
                arguments.distinct_rows,
            )
        )
        print(json.dumps(timings[-1]), flush=True)
    return timings


def time_one_size(
    items: int,
    source: str,
    data: FeatureArchive,
    model: FeatureSPQModel,
    faiss_pq: faiss.Index,
    fine: FineQuantiser,
    mean: FloatArray,
    probe: FloatArray,
    probe_raw: FloatArray,
    distinct_rows: int,
) -> dict[str, Any]:
    chunk = 500_000
    spq_parts, faiss_parts = [], []
    with tempfile.TemporaryDirectory(dir=RESULTS) as folder:
        fine_path = Path(folder) / "fine.u8"
        fine_file = np.lib.format.open_memmap(
            fine_path, mode="w+", dtype=np.uint8, shape=(items, data.vectors.shape[1])
        )
        encode_seconds = 0.0
        distinct = min(items, distinct_rows)
        for start in range(0, distinct, chunk):
            count = min(chunk, distinct - start)
            raw = (
                data.vectors[start : start + count]
                if source == "real"
                else resampled(data, count, seed=start)
            )
            started = time.perf_counter()
            spq_parts.append(model_codes(model, raw))
            encode_seconds += time.perf_counter() - started
            unit = centre_and_normalise(raw, mean)
            faiss_parts.append(faiss_pq.sa_encode(unit))
            fine_file[start : start + count] = fine.encode(unit)
        # A flat scan reads every code whatever its value: beyond the distinct rows the codes
        # repeat, which times the same as as many distinct codes.
        for start in range(distinct, items, distinct):
            count = min(distinct, items - start)
            fine_file[start : start + count] = fine_file[:count]
        fine_file.flush()
        del fine_file
        spq_codes = np.resize(np.concatenate(spq_parts), (items, model.card.num_codebooks))
        faiss_codes = np.concatenate(faiss_parts)
        faiss_codes = np.resize(faiss_codes, (items, faiss_codes.shape[1]))
        spq = spq_index(model, spq_codes)
        del spq_parts, spq_codes
        faiss_index = faiss_pq_index_with_codes(faiss_pq, faiss_codes)
        del faiss_parts, faiss_codes
        stored = np.load(fine_path, mmap_mode="r")
        descriptors = model_descriptors(model, probe_raw)
        shortlists = [spq.search(d[None, :], SHORTLIST)[1][0] for d in descriptors]
        medians = median_one_query_ms(
            {
                "faiss": (lambda q: faiss_index.search(q, 10), probe),
                "spq": (lambda q: spq.search(q, 10), descriptors),
                "spq_shortlist": (lambda q: spq.search(q, SHORTLIST), descriptors),
            }
        )
        rerank_times = []
        for query, shortlist in zip(probe, shortlists, strict=True):
            started = time.perf_counter()
            rerank(query[None, :], shortlist[None, :], stored, fine)
            rerank_times.append(time.perf_counter() - started)
        return {
            "items": items,
            "source": source,
            "bits": model.card.bits,
            "faiss_indexpq_own_codes_ms": medians["faiss"],
            "spq_codes_in_faiss_indexpq_ms": medians["spq"],
            "spq_shortlist_100_ms": medians["spq_shortlist"],
            "second_stage_rerank_100_ms": 1000 * float(np.median(rerank_times)),
            "spq_encode_per_s_single_thread": distinct / encode_seconds,
            "distinct_rows_encoded": distinct,
            "threads": 1,
        }


def faiss_pq_index_with_codes(trained: faiss.Index, codes: npt.NDArray[np.uint8]) -> faiss.Index:
    index = faiss.clone_index(trained)
    index.reset()
    index.add_sa_codes(codes)
    return index


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="first rows only (smoke runs)")
    parser.add_argument("--part", choices=("validation", "test"), default="test")
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--queries", type=int, default=2000, help="held-out regions queried")
    parser.add_argument("--threads", type=int, default=1, help="for training (latency: 1)")
    parser.add_argument("--opq-sample", type=int, default=10_000, help="rows OPQ trains on")
    parser.add_argument("--no-lancedb", dest="lancedb", action="store_false")
    parser.add_argument(
        "--latency-only", dest="quality", action="store_false", help="skip the quality table"
    )
    parser.add_argument("--spq", default="{}", help="JSON overriding the chosen SPQ settings")
    parser.add_argument("--scale-items", type=int, default=10_000_000, help="0: skip")
    parser.add_argument("--scale-bits", type=int, default=64)
    parser.add_argument(
        "--distinct-rows",
        type=int,
        default=1_000_000,
        help="rows encoded at --scale-items; the codes of the rest repeat theirs",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "features.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
