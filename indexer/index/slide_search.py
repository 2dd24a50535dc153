"""Slide and case search: a whole slide (or every slide of a case) asks "which earlier slides or
cases look like this one?", and archive slides or cases come back ranked, with evidence.

A query is a set of item vectors (a slide's tiles or regions, bounded by a label-free mosaic) and
a mean vector. Archive slides are ranked by one of these aggregations:

- ``mean``: the query's mean vector against each archive slide's mean vector (one vector per
  slide, kept beside the items; mean pooling, as RetCCL / TITAN-style slide embeddings compare).
- ``median-min`` (Yottixel, Kalra et al. 2020): for each query item, the distance to its nearest
  item of the archive slide; the slide's distance is the median of these. With similarities
  (higher = closer) it is the median over query items of their best similarity in the slide.
- ``mean-max``: the same with the mean instead of the median (the set-to-set "Chamfer"
  similarity): every query item counts, not only the middle one.
- ``vote`` (SISH-like, Chen et al. 2022): every item hit is one vote for its slide; slides are
  ranked by votes, then by their best hit.

The set aggregations start from an item search: each query item fetches its ``item_k`` best
items (own group excluded), and a slide that an item did not retrieve is given that item's k-th
score (the most it could score: the slide's best item lies below everything retrieved). With an
item scorer, the ``rescore`` best slides are then scored exactly: every query item against every
item of each candidate slide, so median-min and mean-max are the true set-to-set figures for them.

Which wins (benchmarks/quality/slide_search.py, test patients of tcga-hipt-regions-192d,
cancer type, slide level, MV@5): exact floats, mean 0.811, median-min 0.828, vote 0.830,
mean-max 0.845; 64-bit OPQ + 4-bit FastScan codes, mean 0.755, median-min 0.782, vote 0.765,
mean-max 0.803.
The feature model's own 64-bit SPQ codes (benchmarks/results/slide_search_spq.json, a later
patient split whose float mean is 0.839): mean 0.801, median-min 0.825, mean-max 0.843, vote 0.845.
Set-to-set matching is above mean pooling here, as the field reports, and mean-max (every query
item counts) above Yottixel's median; it is the default.

Everything here works over arrays and functions: an `ItemSearch` (query vectors -> top-k item ids
and scores, one group excluded) and an optional `ItemScorer` and `MeanSearch`, so the same code
ranks over exact float vectors, over FAISS codes, or over an `ArchiveIndex`
(`index_item_search`, `index_item_scorer`). Answers are grouped per slide or per group (case):
``group_by="group"`` folds an archive case's slides into one target for the set aggregations
(its items form one set) and takes its best slide for ``mean``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexInputError
from indexer.index.pq import FloatArray, IdArray
from indexer.index.store import SearchFilters, checked_vectors
from model.errors import HistosearchError

IntArray = npt.NDArray[np.int64]
GroupBy = Literal["slide", "group"]

# (queries (Q, D), k, group to leave out or None) -> (scores (Q, k), ids (Q, k)), best first,
# higher = closer, padded with score -inf and id -1: `ArchiveIndex.search_arrays`' contract.
ItemSearch = Callable[[FloatArray, int, str | None], tuple[FloatArray, IdArray]]
# (queries (Q, D), item ids (N,)) -> (Q, N) scores on the item search's own scale.
ItemScorer = Callable[[FloatArray, IdArray], FloatArray]
# (slide mean vectors (Q, D), k, group to leave out) -> (scores (Q, k), slide positions (Q, k)).
MeanSearch = Callable[[FloatArray, int, str | None], tuple[FloatArray, IdArray]]

# Defaults from validation patients of tcga-hipt-regions-192d (benchmarks/results/
# slide_search.json, "validation"): over 32-bit codes, re-scoring the 32 best candidates raised
# mean-max MV@5 from 0.707 to 0.801 (50 items per query item); over floats it moved it by
# half a point (0.867 -> 0.862); 25-100 items per query item differ by about one point.
DEFAULT_ITEM_K: Final = 50
DEFAULT_RESCORE: Final = 32
# Items a query keeps at most: the regions kept per slide in tcga-hipt-regions-192d; a slide of
# 10,000 tiles is reduced to this by `select_mosaic` in well under 100 ms.
DEFAULT_MOSAIC: Final = 24
DEFAULT_EVIDENCE: Final = 3
# k-means of a 10,000-tile slide into 24: 9 ms with 10 rounds on 64 points per centroid, 56 ms
# with 20 rounds on 256 (one core, shared machine); the mosaic is a sample, not a fine partition.
_KMEANS_ITERATIONS: Final = 10
_KMEANS_POINTS_PER_CENTROID: Final = 64


class Aggregation(enum.StrEnum):
    """How item-level similarity becomes a slide's (or case's) score (module doc)."""

    MEAN = "mean"
    MEDIAN_MIN = "median-min"
    MEAN_MAX = "mean-max"
    VOTE = "vote"


SET_AGGREGATIONS: Final = (Aggregation.MEDIAN_MIN, Aggregation.MEAN_MAX, Aggregation.VOTE)


class UnknownSlideError(HistosearchError, LookupError):
    """A slide id the archive does not hold (a 404 naming it)."""

    def __init__(self, slide_id: str) -> None:
        super().__init__(f"no slide {slide_id!r} in this archive")
        self.slide_id = slide_id


class UnknownGroupError(HistosearchError, LookupError):
    """A group (patient, case) id the archive does not hold (a 404 naming it)."""

    def __init__(self, group: str) -> None:
        super().__init__(f"no group {group!r} in this archive")
        self.group = group


class EmptySlideError(HistosearchError, ValueError):
    """A slide or case with no searchable items (a 422)."""


# ---- the archive's slides ----------------------------------------------------------------------


@dataclass(frozen=True)
class SlideCatalog:
    """Which slide each archive item belongs to, and which group (patient) each slide belongs to.

    ``item_ids`` are sorted ascending (ids are found by binary search); ``item_slide`` gives each
    one's slide position in ``slide_ids``; ``slide_group`` each slide's position in ``groups``.
    """

    slide_ids: tuple[str, ...]
    groups: tuple[str, ...]
    slide_group: IntArray
    item_ids: IdArray
    item_slide: IntArray
    _by_slide: IntArray = field(init=False, repr=False, compare=False)
    _slide_starts: IntArray = field(init=False, repr=False, compare=False)
    _by_group: IntArray = field(init=False, repr=False, compare=False)
    _group_starts: IntArray = field(init=False, repr=False, compare=False)
    _slide_at: dict[str, int] = field(init=False, repr=False, compare=False)
    _group_at: dict[str, int] = field(init=False, repr=False, compare=False)

    @classmethod
    def from_items(
        cls,
        item_ids: npt.ArrayLike,
        item_slides: Sequence[str],
        slide_groups: Mapping[str, str],
    ) -> SlideCatalog:
        """From each item's id and slide id, and each slide's group."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(ids) != len(item_slides):
            raise IndexInputError(f"{len(ids)} item ids but {len(item_slides)} slide ids")
        missing = sorted(set(item_slides) - set(slide_groups))
        if missing:
            raise IndexInputError(f"slides without a group: {missing[:5]}")
        slide_ids = tuple(sorted(slide_groups))
        groups = tuple(sorted(set(slide_groups.values())))
        group_position = {group: position for position, group in enumerate(groups)}
        slide_position = {slide: position for position, slide in enumerate(slide_ids)}
        order = np.argsort(ids, kind="stable")
        item_slide = np.array([slide_position[slide] for slide in item_slides], dtype=np.int64)
        return cls(
            slide_ids=slide_ids,
            groups=groups,
            slide_group=np.array(
                [group_position[slide_groups[slide]] for slide in slide_ids], dtype=np.int64
            ),
            item_ids=ids[order],
            item_slide=item_slide[order],
        )

    def __post_init__(self) -> None:
        # Lookup structures built once: items of a slide are a slice of ``_by_slide``.
        by_slide = np.argsort(self.item_slide, kind="stable")
        starts = np.searchsorted(self.item_slide[by_slide], np.arange(len(self.slide_ids) + 1))
        by_group = np.argsort(self.slide_group, kind="stable")
        group_starts = np.searchsorted(self.slide_group[by_group], np.arange(len(self.groups) + 1))
        object.__setattr__(self, "_by_slide", by_slide)
        object.__setattr__(self, "_slide_starts", starts)
        object.__setattr__(self, "_by_group", by_group)
        object.__setattr__(self, "_group_starts", group_starts)
        object.__setattr__(self, "_slide_at", {s: i for i, s in enumerate(self.slide_ids)})
        object.__setattr__(self, "_group_at", {g: i for i, g in enumerate(self.groups)})

    def slide_position(self, slide_id: str) -> int:
        position: int | None = self._slide_at.get(slide_id)
        if position is None:
            raise UnknownSlideError(slide_id)
        return position

    def group_position(self, group: str) -> int:
        position: int | None = self._group_at.get(group)
        if position is None:
            raise UnknownGroupError(group)
        return position

    def slides_of_group(self, group: str) -> IntArray:
        return self.slides_of_groups([self.group_position(group)])

    def slides_of_groups(self, groups: npt.ArrayLike) -> IntArray:
        """Slide positions of the given group positions, in slide order."""
        return _gathered(self._by_group, self._group_starts, groups)

    def items_of_slides(self, slides: npt.ArrayLike) -> IdArray:
        """Item ids of the given slide positions, slide by slide as given, each in id order."""
        rows = _gathered(self._by_slide, self._slide_starts, slides)
        found: IdArray = self.item_ids[rows]
        return found

    def targets_of(self, item_ids: npt.ArrayLike, group_by: GroupBy) -> IntArray:
        """Slide (or group) position of each item id; -1 for padding (-1) or an unknown id."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(self.item_ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        known = (ids >= 0) & (self.item_ids[at] == ids)
        slides = np.where(known, self.item_slide[at], -1)
        if group_by == "group":
            slides = np.where(known, self.slide_group[np.maximum(slides, 0)], -1)
        return slides.astype(np.int64)

    def target_names(self, group_by: GroupBy) -> tuple[str, ...]:
        return self.slide_ids if group_by == "slide" else self.groups

    def target_group(self, target: int, group_by: GroupBy) -> str:
        """The group of a slide position, or the group at a group position."""
        if group_by == "slide":
            return self.groups[int(self.slide_group[target])]
        return self.groups[target]


def _gathered(order: IntArray, starts: IntArray, wanted: npt.ArrayLike) -> IntArray:
    """The concatenated slices ``order[starts[w]:starts[w + 1]]`` of each wanted position."""
    positions = np.asarray(wanted, dtype=np.int64).ravel()
    if len(positions) == 0:
        return np.empty(0, dtype=np.int64)
    begins, ends = starts[positions], starts[positions + 1]
    lengths = ends - begins
    # Offsets of each output entry inside its own slice, without a Python loop.
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    gathered: IntArray = order[np.repeat(begins, lengths) + within].astype(np.int64)
    return gathered


# ---- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideQuery:
    """A slide or case as a query: its (mosaic) item vectors, its mean vector, the group left out.

    ``mean`` is the mean over all the slide's items (not only the mosaic's); for a case, the mean
    of its slides' means.
    """

    vectors: FloatArray
    mean: FloatArray
    exclude_group: str | None


def select_mosaic(vectors: npt.NDArray[np.floating], limit: int, seed: int = 0) -> IdArray:
    """Positions of at most ``limit`` representative rows, chosen without labels (sorted).

    A set no larger than ``limit`` is kept whole. Otherwise k-means with ``limit`` centroids (on
    the L2-normalised vectors, fixed seed) and, per centroid, the row nearest to it: Yottixel's
    mosaic, in the feature space rather than by colour and position.
    """
    count = len(vectors)
    if limit < 1:
        raise IndexInputError(f"a mosaic needs at least one item, got limit {limit}")
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    unit = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(unit)
    kmeans = faiss.Kmeans(
        unit.shape[1],
        limit,
        niter=_KMEANS_ITERATIONS,
        seed=seed,
        max_points_per_centroid=_KMEANS_POINTS_PER_CENTROID,
        # A slide of a few dozen items is clustered too: no warning about few points.
        min_points_per_centroid=1,
    )
    kmeans.train(unit)
    # Nearest row per centroid; two centroids may share a row, so fewer may come back.
    centroids = np.asarray(kmeans.centroids, dtype=np.float32)
    _, nearest = faiss.knn(centroids, unit, 1)
    chosen: IdArray = np.unique(nearest[:, 0]).astype(np.int64)
    return chosen


def vector_set_query(
    vectors: npt.NDArray[np.floating],
    dim: int,
    *,
    exclude_group: str | None = None,
    mosaic: int = DEFAULT_MOSAIC,
    seed: int = 0,
) -> SlideQuery:
    """A query from a set of vectors (an uploaded slide's tile descriptors).

    Refused: a set of the wrong dimension or with NaN (`IndexInputError`), an empty set
    (`EmptySlideError`).
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 2 and len(array) == 0:
        raise EmptySlideError("the slide has no searchable items")
    array = checked_vectors(array, dim, "slide item vectors")
    kept = array[select_mosaic(array, mosaic, seed)]
    return SlideQuery(kept, array.mean(axis=0), exclude_group)


def slide_query(
    catalog: SlideCatalog,
    slide_id: str,
    vectors_of: Callable[[IdArray], FloatArray],
    *,
    mosaic: int = DEFAULT_MOSAIC,
    mean_of: Callable[[IntArray], FloatArray] | None = None,
    exclude_own_group: bool = True,
) -> SlideQuery:
    """An archive slide as a query; its own group (patient) is left out unless told otherwise.

    ``vectors_of`` gives item vectors (for codes: their decoded vectors); ``mean_of`` the slide
    means kept beside the items, else the mean of the slide's items is used.
    """
    position = catalog.slide_position(slide_id)
    return _query_of_slides(
        catalog,
        np.array([position]),
        vectors_of,
        mosaic,
        mean_of,
        catalog.target_group(position, "slide") if exclude_own_group else None,
        f"slide {slide_id!r}",
    )


def case_query(
    catalog: SlideCatalog,
    group: str,
    vectors_of: Callable[[IdArray], FloatArray],
    *,
    mosaic: int = DEFAULT_MOSAIC,
    mean_of: Callable[[IntArray], FloatArray] | None = None,
) -> SlideQuery:
    """Every slide of a group (a patient's case) as one query, that group left out."""
    slides = catalog.slides_of_group(group)
    return _query_of_slides(catalog, slides, vectors_of, mosaic, mean_of, group, f"group {group!r}")


def _query_of_slides(
    catalog: SlideCatalog,
    slides: IntArray,
    vectors_of: Callable[[IdArray], FloatArray],
    mosaic: int,
    mean_of: Callable[[IntArray], FloatArray] | None,
    exclude_group: str | None,
    what: str,
) -> SlideQuery:
    ids = catalog.items_of_slides(slides)
    if len(ids) == 0:
        raise EmptySlideError(f"{what} has no searchable items")
    vectors = np.asarray(vectors_of(ids), dtype=np.float32)
    mean = vectors.mean(axis=0) if mean_of is None else np.asarray(mean_of(slides)).mean(axis=0)
    return SlideQuery(
        vectors[select_mosaic(vectors, mosaic)], mean.astype(np.float32), exclude_group
    )


# ---- aggregation over item hits ----------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """An archive item that supports a ranked slide or case: which query item found it, how well."""

    query_item: int
    item_id: int
    score: float


@dataclass(frozen=True)
class RankedTarget:
    """A ranked slide (or case): its id, its group, its score and its best items."""

    target: str
    group: str
    score: float
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class TargetScores:
    """Targets (slide or group positions) and their scores, best first."""

    targets: IntArray
    scores: FloatArray


def aggregate_hits(scores: FloatArray, targets: IntArray, aggregation: Aggregation) -> TargetScores:
    """Rank the targets of (n, k) item hits (target -1 = padding) by a set aggregation.

    A target that query item i did not retrieve is given i's lowest retrieved score (module doc);
    query items that retrieved nothing are left out. Ties go to the smaller target position.
    """
    valid = targets >= 0
    rows = valid.any(axis=1)
    scores, targets, valid = scores[rows], targets[rows], valid[rows]
    if not rows.any():
        return TargetScores(np.empty(0, np.int64), np.empty(0, np.float32))
    found, column = np.unique(targets[valid], return_inverse=True)
    row_of = np.nonzero(valid)[0]
    if aggregation is Aggregation.VOTE:
        votes = np.bincount(column, minlength=len(found)).astype(np.float64)
        best = np.full(len(found), -np.inf)
        np.maximum.at(best, column, scores[valid])
        # Votes first; the best hit only breaks ties (its share stays below one vote).
        span = np.ptp(best) if np.isfinite(best).all() else 0.0
        tie_break = (best - best.min()) / (span + 1.0) if span > 0 else np.zeros_like(best)
        return _ranked(found, (votes + 0.5 * tie_break).astype(np.float32))
    floor = np.where(valid, scores, np.inf).min(axis=1)
    per_item = np.repeat(floor[:, None], len(found), axis=1).astype(np.float32)
    np.maximum.at(per_item, (row_of, column), scores[valid])
    return _ranked(found, _reduce_items(per_item, aggregation))


def _reduce_items(per_item: FloatArray, aggregation: Aggregation) -> FloatArray:
    """(n, T) best similarity of each query item in each target -> (T,) target scores."""
    if aggregation is Aggregation.MEDIAN_MIN:
        reduced: FloatArray = np.median(per_item, axis=0).astype(np.float32)
    elif aggregation is Aggregation.MEAN_MAX:
        reduced = per_item.mean(axis=0, dtype=np.float64).astype(np.float32)
    else:
        raise ValueError(f"{aggregation} is not an item-set aggregation")
    return reduced


def _ranked(targets: IntArray, scores: npt.NDArray[np.floating]) -> TargetScores:
    order = np.lexsort((targets, -scores))
    return TargetScores(targets[order].astype(np.int64), scores[order].astype(np.float32))


def rescore_targets(
    queries: FloatArray,
    candidates: IntArray,
    catalog: SlideCatalog,
    scorer: ItemScorer,
    aggregation: Aggregation,
    group_by: GroupBy,
) -> TargetScores:
    """Exact set-to-set scores of candidate targets: every query item against all their items."""
    slides = candidates if group_by == "slide" else catalog.slides_of_groups(candidates)
    ids = catalog.items_of_slides(slides)
    owners = catalog.targets_of(ids, group_by)
    order = np.argsort(owners, kind="stable")
    ids, owners = ids[order], owners[order]
    if len(ids) == 0:
        return TargetScores(np.empty(0, np.int64), np.empty(0, np.float32))
    item_scores = np.asarray(scorer(queries, ids), dtype=np.float32)
    present, starts = np.unique(owners, return_index=True)
    per_item = np.maximum.reduceat(item_scores, starts, axis=1)
    return _ranked(present, _reduce_items(per_item, aggregation))


# ---- the search --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlideSearchSettings:
    """Knobs of a slide search (defaults chosen on validation patients; see the constants)."""

    item_k: int = DEFAULT_ITEM_K
    rescore: int = DEFAULT_RESCORE
    evidence: int = DEFAULT_EVIDENCE

    def __post_init__(self) -> None:
        if self.item_k < 1:
            raise IndexInputError(f"item_k must be at least 1, got {self.item_k}")
        if self.rescore < 0 or self.evidence < 0:
            raise IndexInputError("rescore and evidence must not be negative")


@dataclass(frozen=True)
class SlideSearcher:
    """Slide and case search over one archive: its catalog and the functions that search it."""

    catalog: SlideCatalog
    item_search: ItemSearch
    item_scorer: ItemScorer | None = None
    mean_search: MeanSearch | None = None
    settings: SlideSearchSettings = SlideSearchSettings()

    def search(
        self,
        query: SlideQuery,
        k: int,
        aggregation: Aggregation = Aggregation.MEAN_MAX,
        group_by: GroupBy = "slide",
    ) -> list[RankedTarget]:
        """The k best archive slides (or cases) for a slide or case query, best first."""
        if k < 1:
            raise IndexInputError(f"k must be at least 1, got {k}")
        if len(query.vectors) == 0:
            raise EmptySlideError("the query has no searchable items")
        if aggregation is Aggregation.MEAN and self.item_scorer is not None:
            return self._mean_answers(query, k, group_by, self.item_scorer)
        hit_scores, hit_ids = self.item_search(
            query.vectors, self.settings.item_k, query.exclude_group
        )
        ranked = self.rank(query, hit_scores, hit_ids, k, aggregation, group_by)
        return self._answers(ranked, hit_scores, hit_ids, group_by)

    def rank(
        self,
        query: SlideQuery,
        hit_scores: FloatArray,
        hit_ids: IdArray,
        k: int,
        aggregation: Aggregation,
        group_by: GroupBy,
    ) -> TargetScores:
        """The k best targets given the query items' hits (the evaluation fetches hits once for
        every aggregation and calls this)."""
        if aggregation is Aggregation.MEAN:
            return self._by_mean(query, k, group_by)
        return self._by_items(query.vectors, hit_scores, hit_ids, k, aggregation, group_by)

    def _by_mean(self, query: SlideQuery, k: int, group_by: GroupBy) -> TargetScores:
        if self.mean_search is None:
            raise IndexInputError("this archive keeps no slide mean vectors to search")
        return mean_ranking(self.mean_search, self.catalog, query, k, group_by)

    def _by_items(
        self,
        queries: FloatArray,
        hit_scores: FloatArray,
        hit_ids: IdArray,
        k: int,
        aggregation: Aggregation,
        group_by: GroupBy,
    ) -> TargetScores:
        targets = self.catalog.targets_of(hit_ids, group_by)
        ranked = aggregate_hits(hit_scores, targets, aggregation)
        depth = max(k, self.settings.rescore)
        if self.item_scorer is None or aggregation is Aggregation.VOTE or not self.settings.rescore:
            return TargetScores(ranked.targets[:k], ranked.scores[:k])
        exact = rescore_targets(
            queries, ranked.targets[:depth], self.catalog, self.item_scorer, aggregation, group_by
        )
        return TargetScores(exact.targets[:k], exact.scores[:k])

    def _mean_answers(
        self, query: SlideQuery, k: int, group_by: GroupBy, scorer: ItemScorer
    ) -> list[RankedTarget]:
        """``mean`` ranks slides by one vector each and needs no item hits: its evidence is the
        ranked slides' own items scored against the query's. A scan of every item for evidence
        alone cost as much as a whole set-aggregation search (8-bit PQ, 24 query items against
        147k: about 25 ms of the 46 ms a mean query took)."""
        ranked = self._by_mean(query, k, group_by)
        names = self.catalog.target_names(group_by)
        return [
            RankedTarget(
                target=names[target],
                group=self.catalog.target_group(target, group_by),
                score=float(score),
                evidence=scored_evidence(
                    self.catalog, scorer, query.vectors, target, group_by, self.settings.evidence
                ),
            )
            for target, score in zip(ranked.targets.tolist(), ranked.scores.tolist(), strict=True)
        ]

    def _answers(
        self, ranked: TargetScores, hit_scores: FloatArray, hit_ids: IdArray, group_by: GroupBy
    ) -> list[RankedTarget]:
        names = self.catalog.target_names(group_by)
        targets = self.catalog.targets_of(hit_ids, group_by)
        return [
            RankedTarget(
                target=names[target],
                group=self.catalog.target_group(target, group_by),
                score=float(score),
                evidence=best_evidence(
                    hit_scores, hit_ids, targets == target, self.settings.evidence
                ),
            )
            for target, score in zip(ranked.targets.tolist(), ranked.scores.tolist(), strict=True)
        ]


def mean_ranking(
    mean_search: MeanSearch,
    catalog: SlideCatalog,
    query: SlideQuery,
    k: int,
    group_by: GroupBy,
) -> TargetScores:
    """Slides by their mean vector's score; per group, each group's best slide (fetched deeper
    until k groups are found or every slide was seen)."""
    fetch = k
    while True:
        scores, slides = mean_search(query.mean[None, :], fetch, query.exclude_group)
        valid = slides[0] >= 0
        slide_rows, slide_scores = slides[0][valid].astype(np.int64), scores[0][valid]
        if group_by == "slide":
            return TargetScores(slide_rows[:k], slide_scores[:k])
        groups = catalog.slide_group[slide_rows]
        _, first = np.unique(groups, return_index=True)
        first = np.sort(first)
        if len(first) >= k or fetch >= len(catalog.slide_ids) or not valid.all():
            return TargetScores(groups[first][:k], slide_scores[first][:k])
        fetch = min(len(catalog.slide_ids), fetch * 4)


def best_evidence(
    hit_scores: FloatArray, hit_ids: IdArray, of_target: npt.NDArray[np.bool_], count: int
) -> tuple[Evidence, ...]:
    """The ``count`` best distinct archive items among the hits that belong to one target."""
    rows, columns = np.nonzero(of_target & (hit_ids >= 0))
    order = np.argsort(-hit_scores[rows, columns], kind="stable")
    chosen: list[Evidence] = []
    seen: set[int] = set()
    for position in order:
        row, column = int(rows[position]), int(columns[position])
        item = int(hit_ids[row, column])
        if item in seen:
            continue
        seen.add(item)
        chosen.append(Evidence(row, item, float(hit_scores[row, column])))
        if len(chosen) == count:
            break
    return tuple(chosen)


def scored_evidence(
    catalog: SlideCatalog,
    scorer: ItemScorer,
    queries: FloatArray,
    target: int,
    group_by: GroupBy,
    count: int,
) -> tuple[Evidence, ...]:
    """The ``count`` items of a target (slide or group position) that score best against any
    query item, each with the query item that scores it best."""
    if count == 0:
        return ()
    members = np.array([target]) if group_by == "slide" else catalog.slides_of_groups([target])
    ids = catalog.items_of_slides(members)
    if len(ids) == 0:
        return ()
    scores = np.asarray(scorer(queries, ids), dtype=np.float32)
    best_query = np.argmax(scores, axis=0)
    best_score = scores[best_query, np.arange(len(ids))]
    order = np.lexsort((ids, -best_score))[:count]
    return tuple(
        Evidence(int(best_query[i]), int(ids[i]), float(best_score[i])) for i in order.tolist()
    )


# ---- search functions over arrays and over an index --------------------------------------------


class SearchableIndex(Protocol):
    """What slide search needs of an `ArchiveIndex` or `ShardedIndex`."""

    def search_arrays(
        self, queries: npt.NDArray[np.floating], k: int, filters: SearchFilters | None = None
    ) -> tuple[FloatArray, IdArray]: ...

    def scores_of(
        self, query: npt.NDArray[np.floating], item_ids: Sequence[int]
    ) -> list[float | None]: ...


def index_item_search(index: SearchableIndex) -> ItemSearch:
    """The index's own ADC search as an `ItemSearch` (its group filter leaves the group out)."""

    def search(
        queries: FloatArray, k: int, exclude_group: str | None
    ) -> tuple[FloatArray, IdArray]:
        filters = None if exclude_group is None else SearchFilters(exclude_group=exclude_group)
        return index.search_arrays(queries, k, filters)

    return search


def index_item_scorer(index: SearchableIndex) -> ItemScorer:
    """The index's exact ADC scores of given items, one query row at a time."""

    def scorer(queries: FloatArray, item_ids: IdArray) -> FloatArray:
        ids = [int(item) for item in item_ids]
        rows = [index.scores_of(query[None, :], ids) for query in queries]
        return np.array(
            [[-np.inf if score is None else score for score in row] for row in rows],
            dtype=np.float32,
        ).reshape(len(queries), len(ids))

    return scorer


@dataclass(frozen=True)
class VectorArchive:
    """Exact cosine search over float vectors with ids and groups: the reference the codes are
    measured against, and a brute-force `ItemSearch` / `ItemScorer` / `MeanSearch` for tests.

    Rows are L2-normalised on construction (centre them first if the features need it).
    """

    unit: FloatArray
    ids: IdArray
    group_of_row: tuple[str, ...]

    @classmethod
    def build(
        cls, vectors: npt.NDArray[np.floating], ids: npt.ArrayLike, groups: Sequence[str]
    ) -> VectorArchive:
        unit = np.array(vectors, dtype=np.float32, order="C")
        faiss.normalize_L2(unit)
        return cls(unit, np.asarray(ids, dtype=np.int64), tuple(groups))

    def search(
        self, queries: FloatArray, k: int, exclude_group: str | None
    ) -> tuple[FloatArray, IdArray]:
        if k < 1:
            raise IndexInputError(f"k must be at least 1, got {k}")
        unit = np.array(queries, dtype=np.float32, order="C")
        faiss.normalize_L2(unit)
        similarity = unit @ self.unit.T
        if exclude_group is not None:
            similarity[:, np.array(self.group_of_row) == exclude_group] = -np.inf
        found = min(k, similarity.shape[1])
        order = np.lexsort((np.broadcast_to(self.ids, similarity.shape), -similarity), axis=1)
        order = order[:, :found]
        scores = np.take_along_axis(similarity, order, axis=1)
        ids = np.where(np.isfinite(scores), self.ids[order], -1)
        padded_scores = np.full((len(unit), k), -np.inf, dtype=np.float32)
        padded_ids = np.full((len(unit), k), -1, dtype=np.int64)
        padded_scores[:, :found], padded_ids[:, :found] = scores, ids
        return padded_scores, padded_ids

    def scores(self, queries: FloatArray, item_ids: IdArray) -> FloatArray:
        unit = np.array(queries, dtype=np.float32, order="C")
        faiss.normalize_L2(unit)
        rows = (
            np.searchsorted(self.ids, item_ids)
            if _sorted(self.ids)
            else _rows_of(self.ids, item_ids)
        )
        scored: FloatArray = unit @ self.unit[rows].T
        return scored


def _sorted(ids: IdArray) -> bool:
    return bool(np.all(ids[1:] >= ids[:-1]))


def _rows_of(ids: IdArray, wanted: IdArray) -> IntArray:
    order = np.argsort(ids)
    rows: IntArray = order[np.searchsorted(ids, wanted, sorter=order)]
    return rows
