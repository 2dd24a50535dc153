"""`histosearch evaluate --source features`: a feature checkpoint beside its baselines, by patient.

Queries are rows of the test groups (patients); the archive is every row of the other groups,
so no query meets its own patient. Every learned baseline (FAISS PQ and OPQ codebooks, the
second stage's scalar quantiser, the SPQ models of other code lengths) is fitted on archive
rows only, never on a test row; the checkpoint was trained without the test groups (checked
against the split it recorded). Relevance: the same label.

Rows, per code length of ``bits``: FAISS IndexPQ and OPQ + IndexPQ (8-bit codewords), SPQ codes
(the checkpoint at its own length; another length trains a model with the checkpoint's
settings on the archive rows), and SPQ + second stage (its shortlist of 100 re-ranked by 8-bit
scalar-quantised vectors). Float exact (cosine on the centred vectors) is the reference.
Metrics (`indexer.evaluate.features.ranking_quality`): P@10, mAP@10, MV@5 (majority vote of the
top 5), recall of the float top 10.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.evaluate.features import (
    FloatArray,
    IntArray,
    Quality,
    centre_and_normalise,
    exact_ranking,
    faiss_pq_index,
    index_ranking,
    ranking_quality,
    rerank,
    spq_ranking,
)
from indexer.index.second_stage import FineQuantiser
from indexer.ingest.feature_table import FeatureTable, read_feature_table
from indexer.ingest.features import FeatureColumns
from indexer.learn.splits import SplitError, read_group_file
from model.atomic import atomic_write_bytes
from model.errors import HistosearchError

if TYPE_CHECKING:
    from model.feature_spq import FeatureSPQModel

log = logging.getLogger(__name__)

SHORTLIST = 100  # the second stage re-ranks 10 x k for k = 10
RUN_EXTRA = "feature_run"  # where `histosearch train --source features` records its split


class FeatureEvaluationError(HistosearchError, ValueError):
    """An evaluation that would not be fair or cannot run: test groups the model trained on,
    none given, or no query left."""


@dataclass(frozen=True)
class FeatureEvaluationSettings:
    """What to evaluate and how much of it (each knob bounds the run time)."""

    checkpoint: Path
    data: Path
    columns: FeatureColumns
    test_groups: tuple[str, ...] | None = None
    bits: tuple[int, ...] = (32, 64, 128)
    max_queries: int = 2000
    fit_rows: int = 20_000
    limit: int | None = None
    seed: int = 0
    threads: int = 2


def recorded_split(checkpoint: Path) -> dict[str, list[str]] | None:
    """The validation and test groups a feature run recorded in its checkpoint, if any."""
    from model.checkpoint import read_checkpoint

    extra = read_checkpoint(Path(checkpoint)).get("extra") or {}
    split = extra.get(RUN_EXTRA, {}).get("split")
    if not split:
        return None
    return {"validation": list(split["validation"]), "test": list(split["test"])}


def evaluate_features(settings: FeatureEvaluationSettings) -> dict[str, Any]:
    """The report: one row per method and code length, and what it was measured on."""
    import faiss
    import torch

    from model.feature_spq import load_feature_checkpoint

    torch.set_num_threads(settings.threads)
    faiss.omp_set_num_threads(settings.threads)
    model = load_feature_checkpoint(settings.checkpoint)
    table = read_feature_table(
        settings.data, settings.columns, settings.limit, model.card.input_dim
    )
    test_groups = _test_groups(settings, table)
    queries, archive = _query_and_archive_rows(table, test_groups, settings)
    mean = table.vectors[archive].mean(axis=0)
    unit_archive = centre_and_normalise(table.vectors[archive], mean)
    unit_queries = centre_and_normalise(table.vectors[queries], mean)
    labels, archive_labels = table.labels[queries], table.labels[archive]
    truth = exact_ranking(unit_queries, unit_archive, SHORTLIST)

    def quality(ranked: IntArray) -> Quality:
        return ranking_quality(ranked, labels, archive_labels, truth)

    float_quality = quality(truth)
    rows = [_row("float exact", None, float_quality, float_quality, 0.0)]
    fit = _sample(unit_archive, settings.fit_rows, settings.seed)
    fine = FineQuantiser.train(fit)
    fine_codes = fine.encode(unit_archive)
    for bits in settings.bits:
        for rotate in (False, True):
            started = time.perf_counter()
            index = faiss_pq_index(fit, bits, 8, rotate, settings.seed)
            ranked = index_ranking(index, unit_archive, unit_queries, 10)
            name = "FAISS OPQ" if rotate else "FAISS PQ"
            rows.append(_row(name, bits, quality(ranked), float_quality, _since(started)))
        started = time.perf_counter()
        spq, origin = _spq_model(
            model, bits, table.vectors[archive], table.slides[archive].tolist()
        )
        shortlist = spq_ranking(spq, table.vectors[archive], table.vectors[queries], SHORTLIST)
        seconds = _since(started)
        rows.append(_row(f"SPQ codes ({origin})", bits, quality(shortlist), float_quality, seconds))
        reranked = rerank(unit_queries, shortlist, fine_codes, fine)
        rows.append(
            _row(
                f"SPQ + second stage (SQ8 re-rank of {SHORTLIST})",
                bits,
                quality(reranked),
                float_quality,
                seconds,
            )
        )
    return {
        "checkpoint": str(settings.checkpoint),
        "data": str(settings.data),
        "feature_model": model.card.feature_model,
        "checkpoint_bits": model.card.bits,
        "queries": len(queries),
        "query_groups": len(test_groups),
        "archive_rows": len(archive),
        "relevance": f"same {settings.columns.label}",
        "split": "queries are rows of the test groups; the archive every other group's rows",
        "rows": rows,
    }


def _test_groups(settings: FeatureEvaluationSettings, table: FeatureTable) -> list[str]:
    """The test groups given (or recorded by the run), refused when the model trained on them."""
    recorded = recorded_split(settings.checkpoint)
    if settings.test_groups is not None:
        test = sorted(set(settings.test_groups))
    elif recorded is not None:
        test = sorted(recorded["test"])
    else:
        raise FeatureEvaluationError(
            f"{settings.checkpoint} records no split: name the test groups (--test-groups-file)"
        )
    known = set(table.groups.tolist())
    unknown = [group for group in test if group not in known]
    if len(unknown) == len(test):
        raise FeatureEvaluationError(f"none of the {len(test)} test groups is in {settings.data}")
    if recorded is not None:
        held_out = set(recorded["validation"]) | set(recorded["test"])
        trained = [group for group in test if group in known and group not in held_out]
        if trained:
            more = f" and {len(trained) - 5} more" if len(trained) > 5 else ""
            raise FeatureEvaluationError(
                f"{settings.checkpoint} was trained on test groups {trained[:5]}{more}: queries "
                "of those patients would be scored against a model that has seen them"
            )
    return [group for group in test if group in known]


def _query_and_archive_rows(
    table: FeatureTable, test_groups: Sequence[str], settings: FeatureEvaluationSettings
) -> tuple[IntArray, IntArray]:
    queries = table.rows_of(test_groups)
    archive = np.setdiff1d(np.arange(len(table)), queries).astype(np.int64)
    if len(archive) < SHORTLIST:
        raise FeatureEvaluationError(f"only {len(archive)} archive rows: need {SHORTLIST}")
    if len(queries) > settings.max_queries:
        picks = np.random.default_rng(settings.seed).choice(
            len(queries), settings.max_queries, replace=False
        )
        queries = np.sort(queries[picks])
    return queries, archive


def _spq_model(
    model: FeatureSPQModel, bits: int, archive: FloatArray, slides: Sequence[str]
) -> tuple[FeatureSPQModel, str]:
    """The checkpoint at its own code length; at another, a model trained with its settings on
    the archive rows (never a query row)."""
    if model.card.bits == bits:
        return model, "the checkpoint"
    from indexer.learn.feature_config import FeatureTrainConfig
    from indexer.learn.feature_training import train_on_features

    recorded = dict(model.card.training)
    recorded.update(bits=bits)
    config = FeatureTrainConfig.model_validate(recorded)
    log.info("training SPQ at %d bits on %d archive rows", bits, len(archive))
    trained = train_on_features(archive, list(slides), config)
    return trained.model, f"trained here on the archive, {config.epochs} epochs"


def _sample(vectors: FloatArray, rows: int, seed: int) -> FloatArray:
    """At most ``rows`` rows to fit codebooks on (OPQ's rotation takes minutes on 100k)."""
    if len(vectors) <= rows:
        return vectors
    picks = np.random.default_rng(seed).choice(len(vectors), rows, replace=False)
    return np.ascontiguousarray(vectors[np.sort(picks)])


def _since(started: float) -> float:
    return time.perf_counter() - started


def _row(
    method: str, bits: int | None, quality: Quality, reference: Quality, seconds: float
) -> dict[str, Any]:
    return {
        "method": method,
        "bits": bits,
        **quality.as_dict(),
        "share_of_float_p_at_10": quality.precision_at_10 / reference.precision_at_10
        if reference.precision_at_10
        else None,
        "seconds": round(seconds, 2),
    }


def markdown_report(report: dict[str, Any]) -> str:
    """``evaluation.md``: what was measured, then a table with a row per method."""
    lines = [
        f"# Feature-archive retrieval: {report['feature_model']} vectors",
        "",
        f"{report['queries']} queries from {report['query_groups']} test groups against "
        f"{report['archive_rows']} archive rows of the other groups; relevant: "
        f"{report['relevance']}. Recall@10 is the share of the float top 10 kept.",
        "",
        "| method | bits | P@10 | share of float P@10 | mAP@10 | MV@5 | recall of float top 10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        share = row["share_of_float_p_at_10"]
        lines.append(
            f"| {row['method']} | {row['bits'] or '-'} | {row['p_at_10']:.4f} | "
            f"{'-' if share is None else f'{100 * share:.1f}%'} | {row['map_at_10']:.4f} | "
            f"{row['mv_at_5']:.4f} | {row['float_recall_at_10']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_feature_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``evaluation.json`` and ``evaluation.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "evaluation.json", out / "evaluation.md"]
    atomic_write_bytes(paths[0], (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(paths[1], markdown_report(report).encode())
    return paths


def held_out_groups(names: Sequence[str] | None, files: Sequence[Path]) -> tuple[str, ...] | None:
    """Groups named on the command line and in files, or None when none are."""
    groups = list(names or [])
    for path in files:
        groups += read_group_file(path)
    if not groups and (names or files):
        raise SplitError("the test groups given are empty")
    return tuple(groups) if groups else None
