"""Slide and case search benchmark on real features: tcga-hipt-regions-192d.

    nice -n 10 python -m benchmarks.quality.slide_search [--threads 2] [--validation-patients 400]
        [--test-patients N] [--opq] [--spq] [--spq-train-patients N] [--skip-latency]
        [--skip-quality] [--data DIR] [--out FILE]

The committed results/slide_search.json ran ``--threads 1 --validation-patients 150
--test-patients 400`` (a seeded third of the test patients; the machine was shared by others),
results/slide_search_opq.json the same with ``--opq --skip-latency`` (where validation chose
OPQ with 4-bit FastScan codes).

7,437 TCGA slides of 6,170 patients (HIPT region embeddings, 192-d, at most 24 per slide, each
slide's mean over all its regions beside them). Patients are split once (seed 0) into train 65% /
validation 15% / test 20%. Codes are trained on training patients' vectors only; every choice
(code family, items per query item, rescoring depth) is made on validation patients; the figures
reported are test patients' (leave one patient out: a query never meets its own patient).

Tasks: the cancer type (25 classes), and the subtype within BRCA (IDC/ILC), kidney
(CCRCC/PRCC/CHRCC) and lung (LUAD/LUSC), each over its own slides, with the pan-cancer codes.
Levels: a slide as query, slides as answers; a case (all slides of a patient) as query, cases as
answers. Sources: exact float cosine, and codes of 32 / 64 / 128 bits of the code family that
scored best at 64 bits on validation (FAISS PQ with 8-bit sub-quantisers, or 4-bit FastScan; OPQ
rotations too with ``--opq``); slide means get their own codebook of the same size. With
``--spq``, the sources are exact float and the product's own codes instead: the feature model of
``histosearch train --source features`` (`indexer.learn.feature_training`, 8-bit codewords, the
settings chosen per code length in `benchmarks.quality.features`) trained on the training
patients' items (``--spq-train-patients`` of them, seeded), each slide's mean vector coded by
the same model (an index derives its slide means from the items' codes instead); at 64 bits
also with coded queries (a query by slide id searches with its items' stored codes). Results:
``benchmarks/results/slide_search_spq.json`` (``--spq-bits`` and ``--spq-skip-float`` split the
work between runs on the same split).

Latency (one query at a time, best of the median over queries, ``--threads`` FAISS threads):
a slide query of 24 items against the 147k items / 7,437 slides; the same against 10^6 items
(the 147k resampled with Gaussian noise, sigma 0.03 per dimension on unit vectors, in synthetic
slides of 24 items: a stand-in of the real distribution, not real slides); and a slide of
10,000 tiles (one slide's regions resampled with the same noise) reduced to its mosaic first.
Results: a table on stdout and ``benchmarks/results/slide_search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from indexer.evaluate.slide_level import (
    SUBTYPE_TASKS,
    CodeSource,
    EvaluationSettings,
    LabelledSlides,
    PatientSplit,
    PreparedArchive,
    SlideFeatures,
    SPQCodec,
    TrainedCodes,
    Variant,
    centre_and_normalise,
    choose_variants,
    evaluate_part,
    faiss_pq_source,
    float_source,
    knob_grid,
    load_labelled_slides,
    patient_split,
    prepare_archive,
    spq_source,
    train_codes,
    training_item_slides,
)
from indexer.index.pq import FloatArray
from indexer.index.slide_search import (
    Aggregation,
    SlideQuery,
    SlideSearchSettings,
    select_mosaic,
    vector_set_query,
)

DATA = shared_data_root() / "tcga-hipt-regions-192d"
RESULT = RESULTS / "slide_search.json"
SPQ_RESULT = RESULTS / "slide_search_spq.json"
SEED = 0
VALIDATION_FRACTION, TEST_FRACTION = 0.15, 0.2
ITEM_KS, RESCORES = (25, 50, 100), (0, 32)
BITS = (32, 64, 128)
NOISE = 0.03
SCALE_ITEMS = 1_000_000
LATENCY_SOURCES = ("float", "pq64", "pq64-fastscan", "spq64")
# Options the command line of the results spells by hand (flags, lists).
FLAGS = {"data", "out", "skip_latency", "skip_quality", "opq", "spq", "spq_bits", "spq_skip_float"}


def subset(groups: frozenset[str], count: int | None, seed: int) -> frozenset[str]:
    """``count`` of the groups (seeded), or all of them."""
    if count is None or count >= len(groups):
        return groups
    chosen = np.random.default_rng(seed).choice(sorted(groups), count, replace=False)
    return frozenset(chosen.tolist())


# Code families tried at 64 bits on validation: (OPQ rotation, bits per sub-quantiser). 4-bit
# sub-quantisers are FAISS FastScan (the index's own search structure), searched with a
# shortlist re-ranked by exact ADC.
FAMILIES = ((False, 8), (False, 4))
OPQ_FAMILIES = ((True, 8), (True, 4))


def pq_source(bits: int, opq: bool, nbits: int = 8) -> CodeSource:
    return faiss_pq_source(bits, nbits=nbits, opq=opq, max_training=32_768, seed=SEED)


def family_name(opq: bool, nbits: int, bits: int) -> str:
    return f"{'opq' if opq else 'pq'}{bits}{'-fastscan' if nbits == 4 else ''}"


# ---- quality -----------------------------------------------------------------------------------


def validate(
    features: SlideFeatures,
    trained: TrainedCodes,
    groups: frozenset[str],
) -> tuple[dict[Aggregation, Variant], dict[str, dict[str, float | int]]]:
    """Knobs per aggregation chosen on validation slides (cancer type)."""
    archive = prepare_archive(features, trained, SlideSearchSettings(evidence=0))
    variants = knob_grid(ITEM_KS, RESCORES, list(Aggregation))
    results = evaluate_part(archive, groups, EvaluationSettings(variants=variants))
    table = {variant.name: metrics.as_dict() for variant, metrics in results.items()}
    return choose_variants(results), table


def held_out_figures(
    features: SlideFeatures,
    trained: TrainedCodes,
    chosen: dict[Aggregation, Variant],
    groups: frozenset[str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Test figures per level and aggregation, with the knobs chosen on validation."""
    archive = prepare_archive(features, trained, SlideSearchSettings(evidence=0))
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for level in ("slide", "group"):
        settings = EvaluationSettings(level=level, variants=tuple(chosen.values()))
        results = evaluate_part(archive, groups, settings)
        figures[level] = {
            v.aggregation.value: {**m.as_dict(), "knobs": v.name} for v, m in results.items()
        }
    return figures


def choose_family(
    features: SlideFeatures,
    split: PatientSplit,
    groups: frozenset[str],
    families: Sequence[tuple[bool, int]],
) -> tuple[tuple[bool, int], dict[str, TrainedCodes], dict[str, Any]]:
    """The code family at 64 bits (`FAMILIES`), and the means' codebook (own or the items'),
    on validation; every family's trained 64-bit codes are kept for the latency runs."""
    report: dict[str, Any] = {}
    best: tuple[float, tuple[bool, int]] | None = None
    kept: dict[str, TrainedCodes] = {}
    default = EvaluationSettings()
    for opq, nbits in families:
        started = time.perf_counter()
        trained = train_codes(features, split, pq_source(64, opq, nbits))
        kept[family_name(opq, nbits, 64)] = trained
        seconds = time.perf_counter() - started
        archive = prepare_archive(features, trained, SlideSearchSettings(evidence=0))
        results = evaluate_part(archive, groups, default)
        name = trained.items.name
        report[name] = {
            "train_s": round(seconds, 1),
            **{v.aggregation.value: m.as_dict() for v, m in results.items()},
        }
        score = max(m.mv5 for m in results.values())
        if best is None or score > best[0]:
            best = (score, (opq, nbits))
        shared = replace(trained, means=trained.items)
        mean_only = EvaluationSettings(
            variants=(Variant(Aggregation.MEAN, SlideSearchSettings(evidence=0)),)
        )
        shared_mean = evaluate_part(
            prepare_archive(features, shared, SlideSearchSettings(evidence=0)), groups, mean_only
        )
        report[name]["means_codebook"] = {
            "own": results[next(v for v in results if v.aggregation is Aggregation.MEAN)].mv5,
            "items": next(iter(shared_mean.values())).mv5,
        }
    assert best is not None
    return best[1], kept, report


def quality(
    labelled: LabelledSlides,
    split: PatientSplit,
    validation: frozenset[str],
    test: frozenset[str],
    families: Sequence[tuple[bool, int]],
) -> tuple[dict[str, Any], dict[str, TrainedCodes]]:
    features = labelled.features
    (opq, nbits), trained64, family = choose_family(features, split, validation, families)
    sources: dict[str, CodeSource] = {"float": float_source}
    for bits in BITS:
        sources[family_name(opq, nbits, bits)] = pq_source(bits, opq, nbits)
    report: dict[str, Any] = {"family_on_validation": family, "sources": {}}
    trained_by_source: dict[str, TrainedCodes] = dict(trained64)
    for name, source in sources.items():
        started = time.perf_counter()
        trained = trained64.get(name) or train_codes(features, split, source)
        trained_by_source[name] = trained
        entry = source_figures(name, trained, labelled, validation, test)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["sources"][name] = entry
    return report, trained_by_source


def task_features(labelled: LabelledSlides) -> dict[str, SlideFeatures]:
    """The cancer type, and each organ's subtypes over its own slides."""
    return {"cancer_type": labelled.features} | {
        f"subtype_{organ.lower()}": labelled.subtype_task(organ, subtypes)
        for organ, subtypes in SUBTYPE_TASKS.items()
    }


def source_figures(
    name: str,
    trained: TrainedCodes,
    labelled: LabelledSlides,
    validation: frozenset[str],
    test: frozenset[str],
) -> dict[str, Any]:
    """Knobs chosen on validation patients, then every task's test figures with them."""
    chosen, validation_table = validate(labelled.features, trained, validation)
    entry: dict[str, Any] = {
        "codec": trained.items.name,
        "bits": trained.items.bits,
        "validation": validation_table,
        "chosen_on_validation": {a.value: v.name for a, v in chosen.items()},
        "test": {},
    }
    for task, features in task_features(labelled).items():
        entry["test"][task] = held_out_figures(features, trained, chosen, test)
        print_task(name, task, entry["test"][task])
    return entry


def spq_split_of(split: PatientSplit, train_patients: int | None) -> PatientSplit:
    """The split SPQ trains on: ``train_patients`` of the training patients (seeded), or all."""
    return replace(split, train=subset(split.train, train_patients, SEED))


def train_spq(features: SlideFeatures, spq_split: PatientSplit, bits: int) -> TrainedCodes:
    """The feature model of ``histosearch train --source features`` at ``bits`` (the settings
    chosen per code length on validation patients in `benchmarks.quality.features`)."""
    from benchmarks.quality.features import CHOSEN
    from indexer.learn.feature_training import FeatureTrainConfig

    settings = {**CHOSEN[bits], "threads": torch.get_num_threads(), "feature_model": "hipt"}
    config = FeatureTrainConfig(bits=bits, **settings)
    slides = training_item_slides(features, spq_split)
    return train_codes(features, spq_split, spq_source(config, slides), means_own=False)


def spq_quality(
    labelled: LabelledSlides,
    split: PatientSplit,
    validation: frozenset[str],
    test: frozenset[str],
    train_patients: int | None,
    save: Callable[[dict[str, Any]], None] = lambda report: None,
    bits_asked: Sequence[int] = BITS,
    with_float: bool = True,
) -> tuple[dict[str, Any], dict[str, TrainedCodes]]:
    """Float vectors beside the feature model's own SPQ codes, trained on training patients
    only (``train_patients`` of them, seeded, when given), 64 bits first; ``save`` gets the
    report after each source. At 64 bits the same codes are also searched with coded queries,
    as a query by slide id is (its items are stored codes)."""
    features = labelled.features
    spq_split = spq_split_of(split, train_patients)
    report: dict[str, Any] = {
        "spq_training_patients": len(spq_split.train),
        "spq_training_items": len(training_item_slides(features, spq_split)),
        "sources": {},
    }
    trained_by_source: dict[str, TrainedCodes] = {}
    if with_float:
        started = time.perf_counter()
        float_codes = train_codes(features, split, float_source)
        trained_by_source["float"] = float_codes
        figures = source_figures("float", float_codes, labelled, validation, test)
        report["sources"]["float"] = figures | {"seconds": round(time.perf_counter() - started, 1)}
        save(report)
    for bits in sorted(bits_asked, key=lambda bits: bits != 64):
        started = time.perf_counter()
        trained = train_spq(features, spq_split, bits)
        train_seconds = time.perf_counter() - started
        assert isinstance(trained.items, SPQCodec)
        variants = {f"spq{bits}": trained}
        trained_by_source[f"spq{bits}"] = trained
        if bits == 64:
            coded = SPQCodec(trained.items.model, query_codes=True)
            variants[f"spq{bits}-coded-queries"] = TrainedCodes(trained.centre, coded, coded)
        for name, codes in variants.items():
            started = time.perf_counter()
            entry = source_figures(name, codes, labelled, validation, test)
            entry["train_s"] = round(train_seconds, 1)
            entry["settings"] = trained.items.model.card.training
            entry["seconds"] = round(time.perf_counter() - started, 1)
            report["sources"][name] = entry
            save(report)
    return report, trained_by_source


def print_task(source: str, task: str, figures: dict[str, dict[str, dict[str, Any]]]) -> None:
    for level, by_aggregation in figures.items():
        for aggregation, metrics in by_aggregation.items():
            print(
                f"{source:>7} {task:<16} {level:<5} {aggregation:<10} "
                f"n={metrics['queries']:>5} top1={metrics['top1']:.4f} mv3={metrics['mv3']:.4f} "
                f"mv5={metrics['mv5']:.4f} f1@mv5={metrics['macro_f1_mv5']:.4f} "
                f"map5={metrics['map5']:.4f}  ({metrics['knobs']})",
                flush=True,
            )


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the cancer-type task, slide level, test patients."""
    sources = report["sources"]
    float_slide = sources["float"]["test"]["cancer_type"]["slide"]
    baseline = float_slide["mean"]["mv5"]
    code64 = next(name for name in sources if "64" in name)
    coded = sources[code64]["test"]["cancer_type"]["slide"]
    best_code = max(coded, key=lambda a: coded[a]["mv5"])
    best_float = max(float_slide, key=lambda a: float_slide[a]["mv5"])
    best_set = max((a for a in coded if a != "mean"), key=lambda a: coded[a]["mv5"])
    return {
        "codes_64_source": code64,
        "float_mean_mv5_baseline": baseline,
        "codes_64_best": {"aggregation": best_code, "mv5": coded[best_code]["mv5"]},
        "codes_64_ratio_to_baseline": coded[best_code]["mv5"] / baseline,
        "codes_64_meets_0.98": coded[best_code]["mv5"] >= 0.98 * baseline,
        "codes_64_best_above_baseline": coded[best_code]["mv5"] > baseline,
        "float_best": {"aggregation": best_float, "mv5": float_slide[best_float]["mv5"]},
        "float_best_above_baseline": float_slide[best_float]["mv5"] > baseline,
        "codes_64_mean_mv5": coded["mean"]["mv5"],
        "codes_64_best_set_to_set": {"aggregation": best_set, "mv5": coded[best_set]["mv5"]},
        "codes_64_set_to_set_beats_mean": coded[best_set]["mv5"] > coded["mean"]["mv5"],
    }


# ---- latency -----------------------------------------------------------------------------------


def timed_ms(action: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls (after one warm-up call)."""
    action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def query_latencies(
    archive: PreparedArchive, queries: Sequence[SlideQuery], repeats: int
) -> dict[str, float]:
    """Median ms per slide query (k=10, 3 evidence items), per aggregation, over the queries."""
    searcher = replace(archive.searcher, settings=SlideSearchSettings())
    figures = {}
    for aggregation in Aggregation:

        def one(query: SlideQuery, aggregation: Aggregation = aggregation) -> object:
            return searcher.search(query, 10, aggregation)

        per_query = [timed_ms(partial(one, query), repeats) for query in queries]
        figures[aggregation.value] = round(float(np.median(per_query)), 2)
    return figures


def held_out_queries(
    archive: PreparedArchive, test: frozenset[str], count: int
) -> list[SlideQuery]:
    """Slides of 24 items of test patients, each with its patient left out."""
    catalog = archive.searcher.catalog
    features = archive.features
    row_of = {slide: row for row, slide in enumerate(features.slide_ids)}
    queries = []
    for position, slide in enumerate(catalog.slide_ids):
        group = catalog.groups[catalog.slide_group[position]]
        rows = catalog.items_of_slides([position])
        if group in test and len(rows) == 24:
            mean = archive.unit_means[row_of[slide]]
            queries.append(SlideQuery(archive.unit_items[rows], mean, group))
        if len(queries) == count:
            break
    return queries


def resampled(unit: FloatArray, count: int, seed: int) -> FloatArray:
    """``count`` rows drawn from ``unit`` with Gaussian noise, L2-normalised again."""
    rng = np.random.default_rng(seed)
    rows = unit[rng.integers(0, len(unit), count)]
    noisy = (rows + NOISE * rng.standard_normal(rows.shape, dtype=np.float32)).astype(np.float32)
    faiss.normalize_L2(noisy)
    return noisy


def scaled_features(unit_items: FloatArray, count: int) -> SlideFeatures:
    """``count`` resampled items in synthetic slides of 24, one patient each (already unit, so
    the centre of `TrainedCodes` must be zero for them)."""
    vectors = resampled(unit_items, count, seed=1)
    slides = count // 24 + (count % 24 > 0)
    item_slide = np.arange(count, dtype=np.int64) // 24
    means = np.zeros((slides, vectors.shape[1]), dtype=np.float32)
    np.add.at(means, item_slide, vectors)
    names = tuple(f"synthetic-{i:07d}" for i in range(slides))
    return SlideFeatures(
        vectors=vectors,
        item_slide=item_slide,
        slide_ids=names,
        slide_groups=tuple(f"patient-{i:07d}" for i in range(slides)),
        slide_labels=("none",) * slides,
        slide_means=means,
    )


def latency(
    labelled: LabelledSlides,
    trained_by_source: dict[str, TrainedCodes],
    test: frozenset[str],
    repeats: int,
    scale_items: int,
) -> dict[str, Any]:
    features = labelled.features
    report: dict[str, Any] = {}
    # The search structures: exact float, 8-bit IndexPQ (FAISS PQ, or the feature model's SPQ
    # codes, the product's own), 4-bit FastScan; OPQ only adds a 192 x 192 rotation of the
    # queries, which these timings leave out.
    for name in LATENCY_SOURCES:
        if name not in trained_by_source:
            continue
        archive = prepare_archive(features, trained_by_source[name], SlideSearchSettings())
        queries = held_out_queries(archive, test, 30)
        report[f"{name}_147k_items_7k_slides_ms"] = query_latencies(archive, queries, repeats)
        print(f"latency {name} 147k items: {report[f'{name}_147k_items_7k_slides_ms']}", flush=True)
        if name == "float":
            continue
        key = f"{name}_mosaic_10000_tiles_ms"
        report[key] = mosaic_latency(archive, queries[0], repeats)
        print(f"latency {name} mosaic 10,000 tiles: {report[key]}", flush=True)
        del archive
        big = scaled_features(prepare_archive_units(features, trained_by_source[name]), scale_items)
        zero = np.zeros(big.vectors.shape[1], dtype=np.float32)
        scaled = prepare_archive(
            big, replace(trained_by_source[name], centre=zero), SlideSearchSettings()
        )
        key = f"{name}_{scale_items}_items_{len(big.slide_ids)}_slides_ms"
        report[key] = query_latencies(scaled, queries[:10], repeats)
        print(f"latency {name} {scale_items} items: {report[key]}", flush=True)
        del scaled, big
    return report


def prepare_archive_units(features: SlideFeatures, trained: TrainedCodes) -> FloatArray:
    """The archive's items, centred and L2-normalised as every source sees them."""
    return centre_and_normalise(features.vectors, trained.centre)


def mosaic_latency(archive: PreparedArchive, query: SlideQuery, repeats: int) -> dict[str, float]:
    """A slide of 10,000 tiles: mosaic selection alone, then mosaic + search (k=10)."""
    tiles = resampled(query.vectors, 10_000, seed=2)
    dim = tiles.shape[1]
    searcher = replace(archive.searcher, settings=SlideSearchSettings())
    figures = {"select_mosaic_only": round(timed_ms(lambda: select_mosaic(tiles, 24), repeats), 2)}
    for aggregation in Aggregation:

        def whole(aggregation: Aggregation = aggregation) -> object:
            built = vector_set_query(tiles, dim, exclude_group=query.exclude_group, mosaic=24)
            return searcher.search(built, 10, aggregation)

        figures[f"mosaic_and_{aggregation.value}"] = round(timed_ms(whole, repeats), 2)
    return figures


# ---- the run -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--validation-patients", type=int, default=400)
    parser.add_argument("--test-patients", type=int, default=None, help="default: all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--opq", action="store_true", help="also try OPQ (slow to train)")
    parser.add_argument("--skip-quality", action="store_true", help="latency only")
    parser.add_argument("--scale-items", type=int, default=SCALE_ITEMS)
    parser.add_argument(
        "--spq",
        action="store_true",
        help="float vectors and the feature model's SPQ codes (32/64/128 bits; latency: 64) "
        f"instead of FAISS PQ families; default --out {SPQ_RESULT.relative_to(RESULTS.parent)}",
    )
    parser.add_argument(
        "--spq-train-patients", type=int, default=None, help="SPQ trains on N training patients"
    )
    parser.add_argument("--spq-bits", type=int, nargs="+", choices=BITS, default=list(BITS))
    parser.add_argument(
        "--spq-skip-float",
        action="store_true",
        help="with --spq: no float source (its figures come from another run on the same split)",
    )
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    if args.spq and args.out == RESULT:
        args.out = SPQ_RESULT
    started = time.perf_counter()
    labelled = load_labelled_slides(args.data)
    split = patient_split(labelled.features.slide_groups, VALIDATION_FRACTION, TEST_FRACTION, SEED)
    validation = subset(split.validation, args.validation_patients, SEED)
    test = subset(split.test, args.test_patients, SEED)
    report: dict[str, Any] = {
        "command": "python -m benchmarks.quality.slide_search "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in FLAGS and v is not None
        )
        + (f" --spq-bits {' '.join(map(str, args.spq_bits))}" if args.spq else "")
        + (" --spq-skip-float" if args.spq_skip_float else "")
        + (" --skip-latency" if args.skip_latency else "")
        + (" --skip-quality" if args.skip_quality else "")
        + (" --opq" if args.opq else "")
        + (" --spq" if args.spq else ""),
        "data": "tcga-hipt-regions-192d",
        "split": {
            "seed": SEED,
            "patients": {
                "train": len(split.train),
                "validation": len(split.validation),
                "test": len(split.test),
            },
            "validation_patients_used": len(validation),
            "test_patients_used": len(test),
        },
        "machine": {
            # A shared machine: timings move with the load of others (2 cores).
            "load_average_at_start": list(os.getloadavg()),
            "cpus": platform.processor() or platform.machine(),
            "faiss_threads": args.threads,
        },
    }
    if args.skip_quality:
        trained = {
            "float": train_codes(labelled.features, split, float_source),
            "pq64": train_codes(labelled.features, split, pq_source(64, opq=False)),
            "pq64-fastscan": train_codes(labelled.features, split, pq_source(64, False, 4)),
        }
        if args.spq:
            spq_split = spq_split_of(split, args.spq_train_patients)
            trained["spq64"] = train_spq(labelled.features, spq_split, 64)
    elif args.spq:

        def save(partial: dict[str, Any]) -> None:
            write(args.out, report | {"quality": partial, "partial": True})

        quality_report, trained = spq_quality(
            labelled,
            split,
            validation,
            test,
            args.spq_train_patients,
            save,
            args.spq_bits,
            not args.spq_skip_float,
        )
    else:
        families = FAMILIES + (OPQ_FAMILIES if args.opq else ())
        quality_report, trained = quality(labelled, split, validation, test, families)
    if not args.skip_quality:
        report["quality"] = quality_report
        if "float" in quality_report["sources"] and any(
            "64" in name for name in quality_report["sources"]
        ):
            report["targets"] = targets(quality_report)
        print(json.dumps(report.get("targets"), indent=2))
        write(args.out, report)  # the quality figures survive a failed latency run
    if not args.skip_latency:
        report["latency"] = latency(labelled, trained, test, args.repeats, args.scale_items)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["seconds"] = round(time.perf_counter() - started, 1)
    write(args.out, report)
    print(f"wrote {args.out}")


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, report)


if __name__ == "__main__":
    main()
