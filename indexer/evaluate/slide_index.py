"""Slide- and case-level retrieval quality of an index, leave one patient out.

Each query is a slide (``level="slide"``) or every slide of a patient (``level="group"``) of the
test patients, asked of the whole index as `histosearch search --slide` / the service ask it:
the query's items are its stored codes (decoded), its own patient is left out, archive slides are
ranked by each aggregation over the index's own ADC search. A slide's label is its items' most
frequent label, a case's its slides' most frequent. Metrics as `indexer.evaluate.slide_level`:
top-1, MV@3, MV@5, macro-F1 of MV@5, mAP@5.

An index holds codes only, so its figures are the codes'. A folder of slide features (the layout
of tcga-hipt-regions-192d: `indexer.evaluate.slide_level.load_slide_features`) is evaluated on
float vectors and on FAISS PQ codes trained on its training patients
(`evaluate_feature_folder`), beside each other on the same split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.evaluate.slide_level import (
    DEPTH,
    CodeSource,
    EvaluationSettings,
    LevelMetrics,
    evaluate_part,
    faiss_pq_source,
    float_source,
    label_metrics,
    load_slide_features,
    majority_vote,
    patient_split,
    prepare_archive,
    train_codes,
)
from indexer.index.slide_archive import IndexSlides, SearchableIndex
from indexer.index.slide_search import (
    DEFAULT_MOSAIC,
    Aggregation,
    GroupBy,
    SlideQuery,
    SlideSearchSettings,
    case_query,
    slide_query,
)

RESULT_NAME = "slide_evaluation"
PQ_CENTROIDS = 256


@dataclass(frozen=True)
class SlideEvaluation:
    """Metrics per code source ("codes", "float", "PQ64x8") and aggregation, at one level."""

    level: GroupBy
    test_groups: int
    results: dict[str, dict[str, LevelMetrics]]
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "test_groups": self.test_groups,
            "results": {
                source: {name: metrics.as_dict() for name, metrics in rows.items()}
                for source, rows in self.results.items()
            },
            "notes": list(self.notes),
        }


def evaluate_index(
    index: SearchableIndex,
    test_groups: Iterable[str],
    level: GroupBy,
    *,
    mosaic: int = DEFAULT_MOSAIC,
    settings: SlideSearchSettings | None = None,
) -> SlideEvaluation:
    """Every aggregation on the index's codes, over the labelled slides (or cases) of the test
    groups the index holds; hits are fetched once per query for all aggregations."""
    slides = IndexSlides.of_index(index)
    searcher = slides.searcher(index, settings or SlideSearchSettings(evidence=0))
    catalog = slides.catalog
    groups = sorted(set(test_groups) & set(catalog.groups))
    target_labels = _target_labels(slides, level)
    found: dict[Aggregation, list[list[str]]] = {aggregation: [] for aggregation in Aggregation}
    truth: list[str] = []
    for query, label in _queries(slides, groups, level, mosaic):
        truth.append(label)
        depth = searcher.settings.item_k
        scores, ids = searcher.item_search(query.vectors, depth, query.exclude_group)
        for aggregation in Aggregation:
            ranked = searcher.rank(query, scores, ids, DEPTH, aggregation, level)
            found[aggregation].append([target_labels[t] or "" for t in ranked.targets.tolist()])
    results = {a.value: label_metrics(found[a], truth) for a in Aggregation}
    return SlideEvaluation(level, len(groups), {"codes": results})


def _target_labels(slides: IndexSlides, level: GroupBy) -> list[str | None]:
    if level == "slide":
        return list(slides.labels)
    catalog = slides.catalog
    labels: list[str | None] = []
    for group in catalog.groups:
        own = [slides.labels[s] for s in catalog.slides_of_group(group).tolist()]
        labels.append(majority_vote([label for label in own if label is not None]))
    return labels


def _queries(
    slides: IndexSlides, groups: Sequence[str], level: GroupBy, mosaic: int
) -> Iterable[tuple[SlideQuery, str]]:
    """(query, label) of each labelled test slide or case, its own patient left out."""
    catalog = slides.catalog
    for group in groups:
        members = catalog.slides_of_group(group).tolist()
        if level == "group":
            own = [slides.labels[s] for s in members]
            label = majority_vote([name for name in own if name is not None])
            if label is not None:
                query = case_query(
                    catalog, group, slides.vectors_of, mosaic=mosaic, mean_of=slides.mean_of
                )
                yield query, label
            continue
        for slide in members:
            label = slides.labels[slide]
            if label is not None:
                name = catalog.slide_ids[slide]
                query = slide_query(
                    catalog, name, slides.vectors_of, mosaic=mosaic, mean_of=slides.mean_of
                )
                yield query, label


def evaluate_feature_folder(
    directory: Path,
    level: GroupBy,
    *,
    bits: Sequence[int] = (64,),
    seed: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.2,
    mosaic: int = DEFAULT_MOSAIC,
) -> SlideEvaluation:
    """Float vectors and FAISS PQ codes of each length in ``bits`` of a slide-feature folder, on
    its test patients (seeded patient split; codes trained on the training patients only)."""
    features = load_slide_features(directory)
    split = patient_split(features.slide_groups, validation_fraction, test_fraction, seed)
    training_slides = sum(group in split.train for group in features.slide_groups)
    if training_slides < PQ_CENTROIDS:
        # The slide means' own 8-bit codebook has 256 centroids per sub-quantiser.
        raise ValueError(
            f"{training_slides} training slides: PQ codes of slide means need at least "
            f"{PQ_CENTROIDS} (more patients, or a larger training share)"
        )
    settings = EvaluationSettings(level=level, mosaic=mosaic)
    results: dict[str, dict[str, LevelMetrics]] = {}
    sources: dict[str, CodeSource] = {"float": float_source}
    sources |= {f"PQ{length // 8}x8": faiss_pq_source(length, seed=seed) for length in bits}
    for name, source in sources.items():
        trained = train_codes(features, split, source)
        archive = prepare_archive(features, trained, SlideSearchSettings(evidence=0))
        by_variant = evaluate_part(archive, split.test, settings)
        results[name] = {v.aggregation.value: m for v, m in by_variant.items()}
    return SlideEvaluation(level, len(split.test), results)


def markdown_table(evaluation: SlideEvaluation) -> str:
    lines = [
        f"Slide search, level {evaluation.level}: {evaluation.test_groups} test groups, "
        "each query's own group left out",
        "",
        "| source | aggregation | queries | top-1 | MV@3 | MV@5 | macro-F1 MV@5 | mAP@5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for source, rows in evaluation.results.items():
        for name, m in rows.items():
            lines.append(
                f"| {source} | {name} | {m.queries} | {m.top1:.3f} | {m.mv3:.3f} | "
                f"{m.mv5:.3f} | {m.macro_f1_mv5:.3f} | {m.map5:.3f} |"
            )
    lines.extend(f"\n{note}" for note in evaluation.notes)
    return "\n".join(lines) + "\n"


def write_slide_report(evaluation: SlideEvaluation, out: Path) -> tuple[Path, Path]:
    """OUT/slide_evaluation_<level>.json and .md."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{RESULT_NAME}_{evaluation.level}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(evaluation.as_dict(), indent=2) + "\n")
    md_path.write_text(markdown_table(evaluation))
    return json_path, md_path
