"""Slide- and case-level retrieval evaluation: leave one patient out, over held-out patients.

The archive is every slide of a labelled set of slide features (items per slide, one mean per
slide). Patients are split once (fixed seed) into train / validation / test: codes are trained
on the training patients' items only, knobs are chosen on validation queries, and the figures
reported are those of test queries. Each query (a test slide, or a test patient's case) searches
the whole archive with its own patient left out, as every search does.

Per aggregation (`indexer.index.slide_search.Aggregation`) and code source: top-1 accuracy,
majority vote of the top 3 and 5 (MV@k: the most frequent label, ties to the label ranked first),
macro-F1 of MV@5 over the classes, and mAP@5 (AP@k = sum_{i<=k} P@i rel_i / relevant in the top k,
as `indexer.evaluate.metrics`).

Code sources are pluggable (`CodeSource`: training vectors -> `Codec`); `faiss_pq_source` gives
FAISS PQ / OPQ codes, `float_source` exact cosine. Vectors are centred on the training items' mean
and L2-normalised before anything else (the features' own rule). Slide means are encoded with the
same codec as the items: an index keeps them as codes beside its items.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from indexer.index.pq import FloatArray, IdArray, decode
from indexer.index.slide_search import (
    Aggregation,
    GroupBy,
    IntArray,
    SlideCatalog,
    SlideQuery,
    SlideSearcher,
    SlideSearchSettings,
    select_mosaic,
)

if TYPE_CHECKING:
    from indexer.learn.feature_config import FeatureTrainConfig
    from model.feature_spq import FeatureSPQModel

SUBTYPE_TASKS: dict[str, tuple[str, ...]] = {
    # HIPT's subtyping tasks: IDC vs ILC (the other BRCA codes have 1-21 slides each).
    "BRCA": ("IDC", "ILC"),
    "KIDNEY": ("CCRCC", "PRCC", "CHRCC"),
    "LUNG": ("LUAD", "LUSC"),
}
DEPTH = 5


# ---- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideFeatures:
    """Item vectors grouped by slide, with each slide's patient, label and mean vector."""

    vectors: FloatArray
    item_slide: IntArray
    slide_ids: tuple[str, ...]
    slide_groups: tuple[str, ...]
    slide_labels: tuple[str, ...]
    slide_means: FloatArray

    def keep_slides(self, keep: npt.NDArray[np.bool_], labels: Sequence[str]) -> SlideFeatures:
        """The slides where ``keep`` holds, relabelled with ``labels`` (one per kept slide)."""
        new_position = np.cumsum(keep) - 1
        kept_items = keep[self.item_slide]
        chosen = np.flatnonzero(keep)
        return SlideFeatures(
            vectors=self.vectors[kept_items],
            item_slide=new_position[self.item_slide[kept_items]].astype(np.int64),
            slide_ids=tuple(self.slide_ids[i] for i in chosen),
            slide_groups=tuple(self.slide_groups[i] for i in chosen),
            slide_labels=tuple(labels),
            slide_means=self.slide_means[keep],
        )


def load_slide_features(directory: Path, label: str = "cancer_type") -> SlideFeatures:
    """A folder of ``regions.npy`` / ``regions.csv`` (one row per item: slide_id, patient_id,
    labels) and ``slides.npy`` / ``slides.csv`` (one row per slide), as tcga-hipt-regions-192d."""
    from indexer.ingest.feature_table import TCGA_COLUMNS, read_feature_table

    columns = replace(TCGA_COLUMNS, label=label)
    slides = read_feature_table(directory / "slides.npy", columns)
    regions = read_feature_table(directory / "regions.npy", columns)
    position = {slide: i for i, slide in enumerate(slides.slides.tolist())}
    return SlideFeatures(
        vectors=regions.vectors,
        item_slide=np.array([position[slide] for slide in regions.slides], dtype=np.int64),
        slide_ids=tuple(slides.slides.tolist()),
        slide_groups=tuple(slides.groups.tolist()),
        slide_labels=tuple(slides.labels.tolist()),
        slide_means=slides.vectors,
    )


@dataclass(frozen=True)
class LabelledSlides:
    """Slide features with a primary label (cancer type) and an optional subtype per slide."""

    features: SlideFeatures
    subtypes: tuple[str, ...]

    def subtype_task(self, organ: str, subtypes: Sequence[str]) -> SlideFeatures:
        keep = np.array(
            [
                label == organ and subtype in subtypes
                for label, subtype in zip(self.features.slide_labels, self.subtypes, strict=True)
            ]
        )
        labels = [subtype for subtype, kept in zip(self.subtypes, keep, strict=True) if kept]
        return self.features.keep_slides(keep, labels)


def load_labelled_slides(directory: Path) -> LabelledSlides:
    """Cancer type as the label, and the subtype column beside it."""
    with (directory / "slides.csv").open(newline="") as handle:
        subtypes = tuple(row["subtype"] for row in csv.DictReader(handle))
    return LabelledSlides(load_slide_features(directory), subtypes)


@dataclass(frozen=True)
class PatientSplit:
    train: frozenset[str]
    validation: frozenset[str]
    test: frozenset[str]


def patient_split(
    groups: Sequence[str], validation_fraction: float, test_fraction: float, seed: int
) -> PatientSplit:
    """Distinct groups shuffled with ``seed`` and cut by fraction: no patient in two parts
    (`indexer.learn.splits.patient_split`'s cut, as sets)."""
    from indexer.learn.splits import patient_split as group_split

    split = group_split(groups, validation_fraction, test_fraction, seed)
    return PatientSplit(frozenset(split.train), frozenset(split.validation), frozenset(split.test))


# ---- code sources ------------------------------------------------------------------------------


class CodeSearch(Protocol):
    """Vectors held (as codes or floats) at rows 0..N-1, searched by a score (higher = closer)."""

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]: ...

    def scores(self, queries: FloatArray, rows: IdArray) -> FloatArray: ...


class Codec(Protocol):
    """A trained code source: holds a set of vectors as codes and searches them."""

    @property
    def name(self) -> str: ...

    @property
    def bits(self) -> int | None: ...

    def hold(self, vectors: FloatArray) -> CodeSearch: ...


# Training vectors -> a codec trained on them (FAISS PQ, or the feature model's SPQ).
CodeSource = Callable[[FloatArray], Codec]


@dataclass(frozen=True)
class _FlatSearch:
    unit: FloatArray

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        # A matmul and a partition: 5-10x faster here than FAISS's flat search for the 20-100
        # queries of one slide (its BLAS path adds a heap per query).
        similarity = np.asarray(queries, dtype=np.float32) @ self.unit.T
        k = min(k, similarity.shape[1])
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(similarity, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        rows = np.take_along_axis(top, order, axis=1).astype(np.int64)
        return np.take_along_axis(top_scores, order, axis=1), rows

    def scores(self, queries: FloatArray, rows: IdArray) -> FloatArray:
        found: FloatArray = queries @ self.unit[rows].T
        return found


@dataclass(frozen=True)
class FloatCodec:
    """Exact cosine over float32 vectors (already unit length): the reference."""

    name: str = "float"
    bits: int | None = None

    def hold(self, vectors: FloatArray) -> CodeSearch:
        return _FlatSearch(np.ascontiguousarray(vectors, dtype=np.float32))


def float_source(_training: FloatArray) -> Codec:
    return FloatCodec()


# Shortlist entries beyond k re-ranked exactly after a FastScan pass (as `CodeTable` does).
FASTSCAN_MARGIN = 48


@dataclass
class _FaissCodeSearch:
    """Codes in a FAISS index; scores are minus squared L2 ADC distances. Exact scores of given
    rows come from decoding their codes (the same distances, up to float rounding); a FastScan
    index (8-bit quantised tables) is asked for a shortlist that is re-ranked that way."""

    index: faiss.Index
    codes: npt.NDArray[np.uint8]
    approximate: bool

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        array = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.approximate:
            distances, rows = self.index.search(array, k)
            return -distances, rows.astype(np.int64)
        fetch = min(self.index.ntotal, k + FASTSCAN_MARGIN)
        _, shortlist = self.index.search(array, fetch)
        shortlist = shortlist.astype(np.int64)
        held = self._decoded(np.maximum(shortlist, 0).ravel()).reshape(*shortlist.shape, -1)
        exact = -((held - array[:, None, :]) ** 2).sum(axis=2)
        exact[shortlist < 0] = -np.inf
        order = np.lexsort((shortlist, -exact), axis=1)[:, :k]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(
            shortlist, order, axis=1
        )

    def scores(self, queries: FloatArray, rows: IdArray) -> FloatArray:
        held = self._decoded(rows)
        squared = (
            (queries**2).sum(axis=1)[:, None] - 2 * queries @ held.T + (held**2).sum(axis=1)[None]
        )
        scores: FloatArray = -squared.astype(np.float32)
        return scores

    def _decoded(self, rows: IdArray) -> FloatArray:
        return np.asarray(self.index.sa_decode(self.codes[rows]), dtype=np.float32)


@dataclass(frozen=True)
class FaissCodec:
    """A trained FAISS index of a factory string (``PQ8x8``, ``OPQ8,PQ8x8``, ``PQ16x4fs``)."""

    name: str
    bits: int | None
    trained: faiss.Index

    def hold(self, vectors: FloatArray) -> CodeSearch:
        index = faiss.clone_index(self.trained)
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        codes = index.sa_encode(array)
        index.add(array)
        return _FaissCodeSearch(index, np.asarray(codes, dtype=np.uint8), "fs" in self.name)


def faiss_pq_source(
    bits: int, *, nbits: int = 8, opq: bool = False, max_training: int = 65_536, seed: int = 0
) -> CodeSource:
    """PQ (optionally with an OPQ rotation) of ``bits`` per vector, ``nbits`` per sub-quantiser,
    trained on at most ``max_training`` training vectors (seeded sample)."""
    if bits % nbits:
        raise ValueError(f"{bits} bits is not a whole number of {nbits}-bit sub-quantisers")
    sub_quantisers = bits // nbits
    name = f"PQ{sub_quantisers}x{nbits}{'fs' if nbits == 4 else ''}"
    name = f"OPQ{sub_quantisers},{name}" if opq else name

    def train(training: FloatArray) -> Codec:
        rng = np.random.default_rng(seed)
        take = min(len(training), max_training)
        sample = np.ascontiguousarray(training[rng.choice(len(training), take, replace=False)])
        index = _pq_index(training.shape[1], sub_quantisers, nbits, opq)
        index.train(sample)
        return FaissCodec(name, bits, index)

    return train


def _pq_index(dim: int, sub_quantisers: int, nbits: int, opq: bool) -> faiss.Index:
    """Built by hand, not by `index_factory`: the factory's ``PQ`` turns on polysemous training,
    which took 86 s of a 0.3 s PQ training here and changes nothing ADC ranks by."""
    if nbits == 4:
        quantiser: faiss.Index = faiss.IndexPQFastScan(dim, sub_quantisers, nbits)
    else:
        quantiser = faiss.IndexPQ(dim, sub_quantisers, nbits)
    if not opq:
        return quantiser
    rotation = faiss.OPQMatrix(dim, sub_quantisers)
    # 10 rounds, not FAISS's 50: 82 s against PQ's 14 s at 64 bits on 32k vectors here.
    rotation.niter = 10
    # FAISS's Python wrapper keeps the rotation and the quantiser alive with the index.
    return faiss.IndexPreTransform(rotation, quantiser)


@dataclass
class _SPQSearch:
    """The product's own search of a feature archive: each held vector is the feature model's
    code (`indexer.evaluate.features.model_codes`), a query is the head's descriptor, and the
    score is the inner-product ADC over the model's codewords (FAISS `IndexPQ`, as an index
    searches). ``query_codes`` quantises the queries too: what a query by slide id meets, whose
    items are the index's stored codes, decoded."""

    model: FeatureSPQModel
    index: faiss.IndexPQ
    codes: npt.NDArray[np.uint8]
    codebooks: FloatArray
    query_codes: bool

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        scores, rows = self.index.search(self._queries(queries), k)
        return scores.astype(np.float32), rows.astype(np.int64)

    def scores(self, queries: FloatArray, rows: IdArray) -> FloatArray:
        found: FloatArray = self._queries(queries) @ self._decoded(self.codes[rows]).T
        return found

    def _queries(self, queries: FloatArray) -> FloatArray:
        from indexer.evaluate.features import model_codes, model_descriptors

        array = np.ascontiguousarray(queries, dtype=np.float32)
        if self.query_codes:
            return self._decoded(model_codes(self.model, array))
        return np.ascontiguousarray(model_descriptors(self.model, array))

    def _decoded(self, codes: npt.NDArray[np.uint8]) -> FloatArray:
        return decode(codes.astype(np.int64), self.codebooks)


@dataclass(frozen=True)
class SPQCodec:
    """A trained feature model (`model.feature_spq.FeatureSPQModel`) as a code source."""

    model: FeatureSPQModel
    query_codes: bool = False

    @property
    def name(self) -> str:
        size = self.model.card.codebook_size.bit_length() - 1
        coded = ", coded queries" if self.query_codes else ""
        return f"SPQ{self.model.card.num_codebooks}x{size}{coded}"

    @property
    def bits(self) -> int | None:
        return int(self.model.card.num_codebooks * (self.model.card.codebook_size.bit_length() - 1))

    def hold(self, vectors: FloatArray) -> CodeSearch:
        from indexer.evaluate.features import model_codes, spq_index

        codes = model_codes(self.model, np.ascontiguousarray(vectors, dtype=np.float32))
        codebooks = self.model.codebooks().detach().numpy().astype(np.float32)
        return _SPQSearch(
            self.model, spq_index(self.model, codes), codes, codebooks, self.query_codes
        )


def training_item_slides(features: SlideFeatures, split: PatientSplit) -> list[str]:
    """The slide of each training item, in the order `train_codes` hands the items to a source
    (a feature model's ``slide`` signal pairs items of one slide)."""
    return [
        features.slide_ids[s]
        for s in features.item_slide
        if features.slide_groups[s] in split.train
    ]


def spq_source(config: FeatureTrainConfig, slides: Sequence[str]) -> CodeSource:
    """SPQ on features (`indexer.learn.feature_training.train_on_features`, the code of
    ``histosearch train --source features``) trained on the training items, whose slides
    ``slides`` names row by row. Call `train_codes` with ``means_own=False``: slide means are
    coded by the same model, as an index holds one codebook."""

    def train(training: FloatArray) -> Codec:
        from indexer.learn.feature_training import train_on_features

        if len(training) != len(slides):
            raise ValueError(f"{len(training)} training vectors but {len(slides)} slide names")
        return SPQCodec(train_on_features(training, slides, config).model)

    return train


# ---- leave one patient out ---------------------------------------------------------------------


class ExcludingSearch:
    """A `CodeSearch` as a slide search's `ItemSearch` / `MeanSearch`: rows are the ids, and a
    group is left out by fetching as many more as it holds and dropping them."""

    def __init__(self, held: CodeSearch, row_groups: Sequence[str]) -> None:
        self._held = held
        self._names, self._row_group = np.unique(np.array(row_groups), return_inverse=True)
        self._counts = np.bincount(self._row_group, minlength=len(self._names))
        self._rows = len(row_groups)

    def __call__(
        self, queries: FloatArray, k: int, exclude_group: str | None
    ) -> tuple[FloatArray, IdArray]:
        group = self._group(exclude_group)
        extra = 0 if group < 0 else int(self._counts[group])
        fetch = min(self._rows, k + extra)
        scores, rows = self._held.search(queries, fetch)
        drop = (rows < 0) | (self._row_group[np.maximum(rows, 0)] == group)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        kept_scores = np.take_along_axis(np.where(drop, -np.inf, scores), order, axis=1)
        kept_rows = np.take_along_axis(np.where(drop, -1, rows), order, axis=1)
        if kept_rows.shape[1] < k:
            pad = k - kept_rows.shape[1]
            kept_scores = np.pad(kept_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            kept_rows = np.pad(kept_rows, ((0, 0), (0, pad)), constant_values=-1)
        return kept_scores.astype(np.float32), kept_rows.astype(np.int64)

    def _group(self, name: str | None) -> int:
        if name is None:
            return -1
        at = int(np.searchsorted(self._names, name))
        return at if at < len(self._names) and self._names[at] == name else -1


@dataclass(frozen=True)
class EvaluationSettings:
    """What a run evaluates: the level, and each variant (an aggregation with its knobs).

    Hits are fetched once per query, as deep as the deepest variant asks; a shallower variant
    reads the first columns (rows are best first, so that is its own top-k).
    """

    level: GroupBy = "slide"
    variants: tuple[Variant, ...] = ()
    mosaic: int = 24

    def __post_init__(self) -> None:
        if not self.variants:
            default = SlideSearchSettings(evidence=0)
            object.__setattr__(self, "variants", tuple(Variant(a, default) for a in Aggregation))


@dataclass(frozen=True)
class Variant:
    """One aggregation with its knobs; ``name`` says both."""

    aggregation: Aggregation
    search: SlideSearchSettings

    @property
    def name(self) -> str:
        if self.aggregation in (Aggregation.MEAN, Aggregation.VOTE):
            knobs = "" if self.aggregation is Aggregation.MEAN else f" k={self.search.item_k}"
        else:
            knobs = f" k={self.search.item_k} rescore={self.search.rescore}"
        return f"{self.aggregation.value}{knobs}"


@dataclass(frozen=True)
class PreparedArchive:
    """The archive's items and slide means held by one codec, as a slide searcher."""

    features: SlideFeatures
    searcher: SlideSearcher
    unit_items: FloatArray
    unit_means: FloatArray


def centre_and_normalise(vectors: FloatArray, centre: FloatArray) -> FloatArray:
    unit = np.ascontiguousarray(vectors - centre, dtype=np.float32)
    faiss.normalize_L2(unit)
    return unit


@dataclass(frozen=True)
class TrainedCodes:
    """What is learnt from the training patients: the centre, the items' codec and the slide
    means' codec (by default its own, trained on training slides' means: means spread less than
    items. On 181 validation slides that helped 8-bit PQ's mean search, MV@5 0.757 -> 0.790,
    and hurt 4-bit FastScan's, 0.790 -> 0.757: benchmarks/results/slide_search_opq.json,
    "means_codebook")."""

    centre: FloatArray
    items: Codec
    means: Codec


def train_codes(
    features: SlideFeatures, split: PatientSplit, source: CodeSource, *, means_own: bool = True
) -> TrainedCodes:
    """Centre on the training items' mean; train the codecs on training patients only."""
    training_items = np.array(
        [features.slide_groups[s] in split.train for s in features.item_slide], dtype=bool
    )
    centre = features.vectors[training_items].mean(axis=0)
    items = source(centre_and_normalise(features.vectors[training_items], centre))
    if not means_own:
        return TrainedCodes(centre, items, items)
    training_slides = np.array([group in split.train for group in features.slide_groups])
    means = source(centre_and_normalise(features.slide_means[training_slides], centre))
    return TrainedCodes(centre, items, means)


def prepare_archive(
    features: SlideFeatures, trained: TrainedCodes, search: SlideSearchSettings
) -> PreparedArchive:
    """Every item and slide mean of ``features``, centred, held by the trained codecs, as a
    slide searcher that leaves a group out by `ExcludingSearch`."""
    unit_items = centre_and_normalise(features.vectors, trained.centre)
    unit_means = centre_and_normalise(features.slide_means, trained.centre)
    item_groups = [features.slide_groups[s] for s in features.item_slide]
    catalog = SlideCatalog.from_items(
        np.arange(len(unit_items)),
        [features.slide_ids[s] for s in features.item_slide],
        dict(zip(features.slide_ids, features.slide_groups, strict=True)),
    )
    # The catalog orders slides by id: keep the means' rows in that order.
    row_of = {slide: row for row, slide in enumerate(features.slide_ids)}
    mean_rows = np.array([row_of[slide] for slide in catalog.slide_ids], dtype=np.int64)
    held_items = trained.items.hold(unit_items)
    held_means = trained.means.hold(unit_means[mean_rows])
    searcher = SlideSearcher(
        catalog,
        ExcludingSearch(held_items, item_groups),
        held_items.scores,
        ExcludingSearch(held_means, [features.slide_groups[i] for i in mean_rows]),
        search,
    )
    return PreparedArchive(features, searcher, unit_items, unit_means)


@dataclass(frozen=True)
class LevelMetrics:
    """Figures of one aggregation at one level over one set of queries."""

    queries: int
    top1: float
    mv3: float
    mv5: float
    macro_f1_mv5: float
    map5: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queries": self.queries,
            "top1": self.top1,
            "mv3": self.mv3,
            "mv5": self.mv5,
            "macro_f1_mv5": self.macro_f1_mv5,
            "map5": self.map5,
        }


def query_targets(
    archive: PreparedArchive, level: GroupBy, groups: frozenset[str], mosaic: int
) -> list[tuple[str, SlideQuery, str]]:
    """(name, query, label) of every slide (or case) of the given patients."""
    features, catalog = archive.features, archive.searcher.catalog
    slide_label = dict(zip(features.slide_ids, features.slide_labels, strict=True))
    row_of = {slide: row for row, slide in enumerate(features.slide_ids)}
    queries = []
    for group in sorted(groups & set(catalog.groups)):
        slides = catalog.slides_of_group(group)
        units = [slides[i : i + 1] for i in range(len(slides))] if level == "slide" else [slides]
        for unit in units:
            rows = catalog.items_of_slides(unit)
            names = [catalog.slide_ids[i] for i in unit]
            mean_rows = [row_of[name] for name in names]
            vectors = archive.unit_items[rows]
            query = SlideQuery(
                vectors[select_mosaic(vectors, mosaic)],
                archive.unit_means[mean_rows].mean(axis=0),
                group,
            )
            name = names[0] if level == "slide" else group
            queries.append((name, query, _majority([slide_label[n] for n in names])))
    return queries


def _majority(labels: Sequence[str]) -> str:
    values, counts = np.unique(np.array(labels), return_counts=True)
    return str(values[int(np.argmax(counts))])


def ranked_labels(
    archive: PreparedArchive,
    queries: Sequence[tuple[str, SlideQuery, str]],
    settings: EvaluationSettings,
) -> dict[Variant, list[list[str]]]:
    """The labels of each query's top `DEPTH` targets, per variant; hits fetched once."""
    catalog, features = archive.searcher.catalog, archive.features
    slide_label = dict(zip(features.slide_ids, features.slide_labels, strict=True))
    target_label = (
        [slide_label[s] for s in catalog.slide_ids]
        if settings.level == "slide"
        else _group_labels(catalog, slide_label)
    )
    searchers = {v: replace(archive.searcher, settings=v.search) for v in settings.variants}
    depth = max(variant.search.item_k for variant in settings.variants)
    found: dict[Variant, list[list[str]]] = {variant: [] for variant in settings.variants}
    for _, query, _ in queries:
        scores, ids = archive.searcher.item_search(query.vectors, depth, query.exclude_group)
        for variant, searcher in searchers.items():
            k = variant.search.item_k
            ranked = searcher.rank(
                query, scores[:, :k], ids[:, :k], DEPTH, variant.aggregation, settings.level
            )
            found[variant].append([target_label[t] for t in ranked.targets.tolist()])
    return found


def _group_labels(catalog: SlideCatalog, slide_label: dict[str, str]) -> list[str]:
    by_group: list[list[str]] = [[] for _ in catalog.groups]
    for slide, group in zip(catalog.slide_ids, catalog.slide_group.tolist(), strict=True):
        by_group[group].append(slide_label[slide])
    return [_majority(labels) for labels in by_group]


def label_metrics(ranked: Sequence[Sequence[str]], truth: Sequence[str]) -> LevelMetrics:
    """Top-1, MV@3, MV@5, macro-F1 of MV@5 and mAP@5 of ranked label lists (module doc)."""
    predictions5 = [majority_vote(labels[:5]) for labels in ranked]
    return LevelMetrics(
        queries=len(truth),
        top1=_mean([bool(r) and r[0] == t for r, t in zip(ranked, truth, strict=True)]),
        mv3=_mean([majority_vote(r[:3]) == t for r, t in zip(ranked, truth, strict=True)]),
        mv5=_mean([p == t for p, t in zip(predictions5, truth, strict=True)]),
        macro_f1_mv5=macro_f1(predictions5, truth),
        map5=_mean([average_precision(r[:5], t) for r, t in zip(ranked, truth, strict=True)]),
    )


def majority_vote(labels: Sequence[str]) -> str | None:
    """The most frequent label; among equally frequent ones, the one ranked first."""
    if not labels:
        return None
    counts = {label: labels.count(label) for label in labels}
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


def average_precision(labels: Sequence[str], truth: str) -> float:
    hits, total = 0, 0.0
    for rank, label in enumerate(labels, start=1):
        if label == truth:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def macro_f1(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Unweighted mean F1 over the classes seen in truth or predictions (as scikit-learn)."""
    classes = sorted({t for t in truth} | {p for p in predicted if p is not None})
    scores = []
    for label in classes:
        true_positive = sum(p == t == label for p, t in zip(predicted, truth, strict=True))
        predicted_count = sum(p == label for p in predicted)
        true_count = sum(t == label for t in truth)
        denominator = predicted_count + true_count
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def _mean(values: Sequence[bool | float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def evaluate_part(
    archive: PreparedArchive, groups: frozenset[str], settings: EvaluationSettings
) -> dict[Variant, LevelMetrics]:
    """Metrics per variant over the slides (or cases) of ``groups``, each patient left out."""
    queries = query_targets(archive, settings.level, groups, settings.mosaic)
    truth = [label for _, _, label in queries]
    ranked = ranked_labels(archive, queries, settings)
    return {variant: label_metrics(ranked[variant], truth) for variant in ranked}


def knob_grid(
    item_ks: Sequence[int], rescores: Sequence[int], aggregations: Sequence[Aggregation]
) -> tuple[Variant, ...]:
    """Every aggregation with every knob that matters to it (mean: none; vote: item_k)."""
    variants: dict[str, Variant] = {}
    for aggregation in aggregations:
        for item_k in item_ks:
            for rescore in rescores:
                search = SlideSearchSettings(item_k=item_k, rescore=rescore, evidence=0)
                if aggregation is Aggregation.VOTE:
                    search = SlideSearchSettings(item_k=item_k, rescore=0, evidence=0)
                if aggregation is Aggregation.MEAN:
                    search = SlideSearchSettings(item_k=min(item_ks), rescore=0, evidence=0)
                variant = Variant(aggregation, search)
                variants.setdefault(variant.name, variant)
    return tuple(variants.values())


def choose_variants(results: dict[Variant, LevelMetrics]) -> dict[Aggregation, Variant]:
    """Per aggregation, the variant with the best MV@5 (then top-1, then the shallower one):
    call it with validation results only."""
    best: dict[Aggregation, Variant] = {}
    for variant, metrics in results.items():
        current = best.get(variant.aggregation)
        if current is None or _rank_key(metrics, variant) > _rank_key(results[current], current):
            best[variant.aggregation] = variant
    return best


def _rank_key(metrics: LevelMetrics, variant: Variant) -> tuple[float, float, int, int]:
    return (metrics.mv5, metrics.top1, -variant.search.item_k, -variant.search.rescore)
