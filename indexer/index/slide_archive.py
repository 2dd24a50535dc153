"""The slides of an index, for slide and case search (`indexer.index.slide_search`).

What a slide is depends on what the archive holds; every item belongs to exactly one:

- a tile of a whole-slide image indexed through OpenSlide, or a feature vector of a feature
  archive: the slide named by its ``extra.slide_id`` (`indexer.index.slides`, the ``slides``
  registry; `indexer.ingest.features`);
- any other item (a tile of an image archive): its source image, named
  ``<archive>/<path in the archive>`` as `ItemRecord.display_source` shows it.

A slide's group (patient, case) is its items' group; an item without one is its slide's own
group, as the indexer treats a source image without a group.

Slide means are kept per slide beside the items, as float vectors and as codes: a slide's mean is
the mean of its items' decoded codes (exact: a per-subspace codeword histogram times the
codebooks), and its code assigns that mean to the index's own codebooks, so the ``mean``
aggregation ranks slides by the same asymmetric distance as items (the float query mean against
the slide mean codes). They are derived, not stored: SQLite's item codes are the index's source
of truth, a mean stored beside them would have to follow every add, removal, shard and resumed
run, and deriving them is one SQL read and two bincounts (`IndexSlides.of_index`; the cost of a
cold build is measured in docs/slide-search.md). `SlideArchiveCache` keeps them per index state
(live items, tombstones and last id of each searchable table), so a process derives them once
until the archive changes, and a reopened index gets the same means from the same codes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexInputError
from indexer.index.metadata import SlideRow
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    assign_codes,
    gathered_adc,
    lookup_tables,
    unpack_codes,
)
from indexer.index.records import ItemRecord
from indexer.index.slide_search import (
    DEFAULT_MOSAIC,
    Aggregation,
    GroupBy,
    IntArray,
    RankedTarget,
    SlideCatalog,
    SlideQuery,
    SlideSearcher,
    SlideSearchSettings,
    case_query,
    index_item_search,
    scored_evidence,
    slide_query,
    vector_set_query,
)
from indexer.index.store import SearchFilters

# Chosen on validation patients of tcga-hipt-regions-192d (benchmarks/quality/slide_search.py, 300
# validation patients, 64-bit OPQ codes, slide means coded with the items' codebook, as an index
# holds them): mean-max reached top-1 0.860 and MV@5 0.865, median-min 0.835 / 0.857, vote
# 0.813 / 0.876, mean 0.821 / 0.860. Mean-max also needs no slide means (any archive) and every
# query item counts.
DEFAULT_AGGREGATION: Final = Aggregation.MEAN_MAX


class SlideRows(Protocol):
    """An `ArchiveIndex`: what one directory answers about its items' slides."""

    codebooks: FloatArray

    def slide_rows(self) -> list[SlideRow]: ...

    def content_state(self) -> tuple[int, ...]: ...


class SearchableIndex(Protocol):
    """What a slide search asks of an index, single or sharded."""

    codebooks: FloatArray
    descriptor_dim: int

    def search_arrays(
        self, queries: npt.NDArray[np.floating], k: int, filters: SearchFilters | None = None
    ) -> tuple[FloatArray, IdArray]: ...

    def get(self, item_id: int) -> ItemRecord | None: ...


def index_parts(index: object) -> list[SlideRows]:
    """The directories of an index: itself, or each shard of a `ShardedIndex` (local shards)."""
    shards = getattr(index, "shards", None)
    parts = list(shards) if shards is not None else [index]
    for part in parts:
        if not callable(getattr(part, "slide_rows", None)):
            raise IndexInputError(
                "slide search reads each shard's items: it needs local shards, not remote ones"
            )
    return parts  # type: ignore[return-value]  # checked above


def slide_key(slide_id: str | None, archive: str | None, source: str) -> str:
    """The slide an item belongs to (module doc)."""
    if slide_id:
        return slide_id
    return source if archive is None else f"{archive}/{source}"


@dataclass(frozen=True)
class IndexSlides:
    """An index's slide catalog with each item's code and each slide's mean (vector and code).

    ``codes`` rows follow ``catalog.item_ids``; ``means``, ``mean_codes`` and ``labels`` (each
    slide's most frequent item label, None without labels) follow ``catalog.slide_ids``.
    """

    catalog: SlideCatalog
    codebooks: FloatArray
    codes: CodeArray
    means: FloatArray
    mean_codes: CodeArray
    labels: tuple[str | None, ...] = ()
    state: tuple[int, ...] = field(default=(), compare=False)

    @classmethod
    def of_index(cls, index: object) -> IndexSlides:
        """Read every item's slide, group and code from the index's SQLite (all shards)."""
        parts = index_parts(index)
        codebooks = np.asarray(parts[0].codebooks, dtype=np.float32)
        state = tuple(value for part in parts for value in part.content_state())
        rows = [row for part in parts for row in part.slide_rows()]
        return cls.from_rows(rows, codebooks, state)

    @classmethod
    def from_rows(
        cls, rows: Sequence[SlideRow], codebooks: FloatArray, state: tuple[int, ...] = ()
    ) -> IndexSlides:
        num_codebooks, codebook_size, _ = codebooks.shape
        rows = sorted(rows, key=lambda row: row[0])
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        packed = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.uint8)
        codes = unpack_codes(packed.reshape(len(rows), -1), num_codebooks, codebook_size)
        keys = [slide_key(row[3], row[4], row[5]) for row in rows]
        groups: dict[str, str] = {}
        for key, row in zip(keys, rows, strict=True):
            groups.setdefault(key, row[2] or key)
        catalog = SlideCatalog.from_items(ids, keys, groups)
        means = slide_means(catalog, codes, codebooks)
        mean_codes = assign_codes(means, codebooks) if len(means) else codes[:0]
        labels = _slide_labels(catalog, keys, [row[6] for row in rows])
        return cls(catalog, codebooks, codes, means, mean_codes, labels, state)

    @property
    def descriptor_dim(self) -> int:
        return int(self.codebooks.shape[0] * self.codebooks.shape[2])

    def rows_of(self, item_ids: npt.ArrayLike) -> IntArray:
        """Rows of ``codes`` holding these ids (all must be held)."""
        rows: IntArray = np.searchsorted(self.catalog.item_ids, np.asarray(item_ids, np.int64))
        return rows

    def vectors_of(self, item_ids: IdArray) -> FloatArray:
        """The items' decoded codes: an archive slide as a query is its items as stored."""
        codes = self.codes[self.rows_of(item_ids)]
        selected = self.codebooks[np.arange(codes.shape[1])[None, :], codes.astype(np.intp)]
        return np.ascontiguousarray(selected.reshape(len(codes), -1), dtype=np.float32)

    def target_label(self, target: str, group_by: GroupBy) -> str | None:
        """The label of a ranked slide (its items' most frequent), or of a case (its slides'
        most frequent; ties to the smallest); None when its items carry none."""
        catalog = self.catalog
        if not self.labels:
            return None
        if group_by == "slide":
            label: str | None = self.labels[catalog.slide_position(target)]
            return label
        members = catalog.slides_of_group(target).tolist()
        own: list[str] = [name for name in (self.labels[s] for s in members) if name is not None]
        if not own:
            return None
        return min(set(own), key=lambda name: (-own.count(name), name))

    def mean_of(self, slides: IntArray) -> FloatArray:
        found: FloatArray = self.means[np.asarray(slides, dtype=np.int64)]
        return found

    def item_scores(self, queries: FloatArray, item_ids: IdArray) -> FloatArray:
        """Exact ADC scores, the index's own rule (`gathered_adc` over the same codes)."""
        tables = lookup_tables(np.asarray(queries, dtype=np.float32), self.codebooks)
        rows = self.rows_of(item_ids)
        candidates = np.broadcast_to(rows, (len(queries), len(rows)))
        return gathered_adc(tables, self.codes, candidates)

    def mean_search(
        self, means: FloatArray, k: int, exclude_group: str | None
    ) -> tuple[FloatArray, IdArray]:
        """The best slides by ADC of the query means against the slide mean codes."""
        catalog = self.catalog
        tables = lookup_tables(np.asarray(means, dtype=np.float32), self.codebooks)
        count = len(self.mean_codes)
        scores = gathered_adc(
            tables, self.mean_codes, np.broadcast_to(np.arange(count), (len(means), count))
        )
        if exclude_group is not None and exclude_group in catalog.groups:
            left_out = catalog.slide_group == catalog.group_position(exclude_group)
            scores[:, left_out] = -np.inf
        order = np.lexsort((np.broadcast_to(np.arange(count), scores.shape), -scores), axis=1)
        found = min(k, count)
        top = order[:, :found]
        top_scores = np.take_along_axis(scores, top, axis=1)
        padded_scores = np.full((len(means), k), -np.inf, dtype=np.float32)
        padded = np.full((len(means), k), -1, dtype=np.int64)
        padded_scores[:, :found] = top_scores
        padded[:, :found] = np.where(np.isfinite(top_scores), top, -1)
        return padded_scores, padded

    def searcher(
        self, index: SearchableIndex, settings: SlideSearchSettings | None = None
    ) -> SlideSearcher:
        """Items searched by the index itself (its group filter), scored and mean-searched here."""
        return SlideSearcher(
            self.catalog,
            index_item_search(index),  # type: ignore[arg-type]  # a structural match
            self.item_scores,
            self.mean_search,
            settings or SlideSearchSettings(),
        )


def slide_means(catalog: SlideCatalog, codes: CodeArray, codebooks: FloatArray) -> FloatArray:
    """(S, D) mean of each slide's decoded item codes, without decoding them: per slide and
    subspace, a histogram of codewords, times the codebooks."""
    slides, num_codebooks = len(catalog.slide_ids), codebooks.shape[0]
    codebook_size = codebooks.shape[1]
    if slides == 0:
        return np.zeros((0, num_codebooks * codebooks.shape[2]), dtype=np.float32)
    cell = (
        catalog.item_slide[:, None] * num_codebooks * codebook_size
        + np.arange(num_codebooks)[None, :] * codebook_size
        + codes.astype(np.int64)
    )
    counts = np.bincount(cell.ravel(), minlength=slides * num_codebooks * codebook_size)
    histogram = counts.reshape(slides, num_codebooks, codebook_size).astype(np.float32)
    sizes = np.bincount(catalog.item_slide, minlength=slides).astype(np.float32)
    # (M, S, K) @ (M, K, d) -> (S, M, d)
    summed = np.matmul(histogram.transpose(1, 0, 2), codebooks).transpose(1, 0, 2)
    means = summed.reshape(slides, -1) / np.maximum(sizes, 1.0)[:, None]
    return np.ascontiguousarray(means, dtype=np.float32)


def _slide_labels(
    catalog: SlideCatalog, keys: Sequence[str], labels: Sequence[str | None]
) -> tuple[str | None, ...]:
    """Each slide's most frequent item label (ties to the smallest), None where it has none."""
    counts: dict[str, dict[str, int]] = {}
    for key, label in zip(keys, labels, strict=True):
        if label is not None:
            own = counts.setdefault(key, {})
            own[label] = own.get(label, 0) + 1
    return tuple(
        min(counts[slide], key=lambda label: (-counts[slide][label], label))
        if slide in counts
        else None
        for slide in catalog.slide_ids
    )


class SlideArchiveCache:
    """`IndexSlides` of one index, rebuilt when its items change (thread-safe)."""

    def __init__(self, index: object) -> None:
        self._index = index
        self._mutex = threading.Lock()
        self._slides: IndexSlides | None = None

    def current(self) -> IndexSlides:
        parts = index_parts(self._index)
        state = tuple(value for part in parts for value in part.content_state())
        with self._mutex:
            if self._slides is None or self._slides.state != state:
                self._slides = IndexSlides.of_index(self._index)
            return self._slides


# ---- one slide or case search ------------------------------------------------------------------


@dataclass(frozen=True)
class SlideSearchRequest:
    """A slide (``slide_id``), a case (``group``) or a set of item vectors as the query.

    ``exclude_group``: None leaves out the query's own group (the slide's or case's patient;
    nothing for uploaded vectors); ``""`` leaves out nothing; any other value that group.
    """

    slide_id: str | None = None
    group: str | None = None
    vectors: npt.NDArray[np.floating] | None = None
    aggregation: Aggregation = DEFAULT_AGGREGATION
    group_by: GroupBy = "slide"
    exclude_group: str | None = None
    mosaic: int = DEFAULT_MOSAIC

    def __post_init__(self) -> None:
        given = sum(value is not None for value in (self.slide_id, self.group, self.vectors))
        if given != 1:
            raise IndexInputError("a slide search needs exactly one of a slide, a group, vectors")


@dataclass(frozen=True)
class SlideAnswer:
    """The query as searched (its items after the mosaic) and the ranked slides or cases."""

    query_items: int
    mosaic_items: int
    excluded_group: str | None
    ranked: list[RankedTarget]


def search_slides(
    slides: IndexSlides,
    index: SearchableIndex,
    request: SlideSearchRequest,
    k: int,
    settings: SlideSearchSettings | None = None,
) -> SlideAnswer:
    """Rank the archive's slides (or cases) for a slide, case or vector-set query.

    Refused: an unknown slide or group (`UnknownSlideError`, `UnknownGroupError`), one without
    items or an empty vector set (`EmptySlideError`), vectors of another dimension
    (`IndexInputError`). Every ranked target gets evidence: for one no query item retrieved (the
    mean aggregation can rank such a slide), its items are scored against the query's.
    """
    query, total = _query(slides, request)
    searcher = slides.searcher(index, settings)
    ranked = searcher.search(query, k, request.aggregation, request.group_by)
    evidence = searcher.settings.evidence
    ranked = [
        target
        if target.evidence or not evidence
        else _scored_evidence(slides, query, target, evidence, request.group_by)
        for target in ranked
    ]
    return SlideAnswer(total, len(query.vectors), query.exclude_group, ranked)


def _query(slides: IndexSlides, request: SlideSearchRequest) -> tuple[SlideQuery, int]:
    catalog = slides.catalog
    if request.vectors is not None:
        exclude = request.exclude_group or None
        query = vector_set_query(
            request.vectors, slides.descriptor_dim, exclude_group=exclude, mosaic=request.mosaic
        )
        return query, len(request.vectors)
    if request.slide_id is not None:
        query = slide_query(
            catalog, request.slide_id, slides.vectors_of, mosaic=request.mosaic,
            mean_of=slides.mean_of,
        )  # fmt: skip
        total = len(catalog.items_of_slides([catalog.slide_position(request.slide_id)]))
    else:
        assert request.group is not None
        query = case_query(
            catalog, request.group, slides.vectors_of, mosaic=request.mosaic,
            mean_of=slides.mean_of,
        )  # fmt: skip
        total = len(catalog.items_of_slides(catalog.slides_of_group(request.group)))
    if request.exclude_group is not None:
        query = SlideQuery(query.vectors, query.mean, request.exclude_group or None)
    return query, total


def _scored_evidence(
    slides: IndexSlides, query: SlideQuery, target: RankedTarget, count: int, group_by: GroupBy
) -> RankedTarget:
    catalog = slides.catalog
    position = (
        catalog.slide_position(target.target)
        if group_by == "slide"
        else catalog.group_position(target.target)
    )
    evidence = scored_evidence(
        catalog, slides.item_scores, query.vectors, position, group_by, count
    )
    return RankedTarget(target.target, target.group, target.score, evidence)
