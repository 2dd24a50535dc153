"""The in-memory searchable part of an index: every item's code, id and filter columns.

Items live at positions 0..n-1 in increasing id order (ids come from SQLite's AUTOINCREMENT and are
never reused), so an id is found by binary search and no id-to-position map costs memory.

Searching asks FAISS for a shortlist and re-ranks it with exact ADC:
- FastScan (K=16) scores with 8-bit quantised lookup tables, so its order and scores are
  approximate; the exact re-rank makes the returned scores the model's own ADC scores. With
  nothing filtered or removed, FAISS re-ranks (`IndexRefine` over a flat `IndexPQ` of the same
  codes); otherwise numpy does, over the items that pass.
- FastScan cannot remove ids and takes no ID selector, so removed items are tombstones and filters
  are masks, both applied to the shortlist (which is grown until k items survive). `compact()`
  drops tombstones for good. When a filter leaves few items, scanning them exactly is cheaper.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexInputError
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    flat_pq_index,
    gathered_adc,
    normalise_subvectors,
    pack_codes,
    scan_index,
    unit_lookup_tables,
)

BoolArray = npt.NDArray[np.bool_]
TermArray = npt.NDArray[np.int32]

_Element = TypeVar("_Element", bound=np.generic)

NO_TERM = -1
# Extra shortlist entries beyond k that absorb FastScan's table-quantisation error before the
# exact re-rank. An item is missed only when that error (up to M * span / 510 for 8-bit tables)
# hides it behind more than this many others: with 32-bit codes, blocks of items sharing one code
# fill a shortlist quickly (tests/indexer/test_model_parity.py has blocks of 15-20). The re-rank
# runs in FAISS's C++, so a wide margin costs about a microsecond.
RERANK_MARGIN = 48
# Entries fetched beyond k, so that a run of scores tied with the k-th rarely needs a second
# scan: at 3M items of the resampled HIPT set (64-bit codes) the run ended by the 15th entry in
# 50 queries of 50, and with one entry beyond k a third of the queries scanned twice.
TIE_MARGIN = 32
# A filter leaving at most max(EXACT_SCAN_MIN, size / EXACT_SCAN_DIVISOR) items is answered by
# scanning them exactly in numpy (~0.1 us per item), cheaper then than a FastScan pass over all
# items (~0.5 ns per item) plus a re-rank of a shortlist grown by 1 / (share of eligible items).
EXACT_SCAN_MIN = 1024
EXACT_SCAN_DIVISOR = 200


@dataclass(frozen=True, slots=True)
class Columns:
    """Per-item filter terms (ids into the metadata's vocabulary, `NO_TERM` when unset)."""

    labels: TermArray
    datasets: TermArray
    groups: TermArray

    @staticmethod
    def empty() -> Columns:
        return Columns(*(np.empty(0, dtype=np.int32) for _ in range(3)))


class Everything(enum.Enum):
    """The one value `ALL`: every item passes (no constraint on this term, or no mask at all)."""

    ALL = "all"


class Nothing(enum.Enum):
    """The one value `NONE`: no item passes (or, for an exclusion, no item is left out)."""

    NONE = "none"


ALL: Final = Everything.ALL
NONE: Final = Nothing.NONE


@dataclass(frozen=True, slots=True)
class TermFilter:
    """Which items a search may return, as vocabulary ids.

    ``label`` and ``dataset`` keep only items with that term (`ALL`: any); ``exclude_group`` drops
    the items of that group (`NONE`: drops nothing).
    """

    label: int | Everything = ALL
    dataset: int | Everything = ALL
    exclude_group: int | Nothing = NONE

    @property
    def constrained(self) -> bool:
        return self.label is not ALL or self.dataset is not ALL or self.exclude_group is not NONE


NO_FILTER: Final = TermFilter()


class CodeTable:
    """Codes, ids, filter columns and tombstones of the items, with the FAISS scan index."""

    def __init__(self, codebooks: FloatArray) -> None:
        self.codebooks = codebooks
        self.num_codebooks, self.codebook_size, _ = codebooks.shape
        self._size = 0
        self._codes: CodeArray = np.empty((0, self.num_codebooks), dtype=np.uint8)
        self._ids: IdArray = np.empty(0, dtype=np.int64)
        self._terms = Columns.empty()
        self._alive: BoolArray = np.empty(0, dtype=bool)
        self._removed = 0
        self._build_scan(np.empty((0, 1), dtype=np.uint8))

    def _build_scan(self, packed: CodeArray) -> None:
        """The FAISS structures over the packed codes, in position order.

        ``_scan`` gives shortlists (FastScan, approximate, where K=16 allows it); ``_ranker`` gives
        exact ADC top-k: FAISS's own re-rank of a FastScan shortlist with a flat `IndexPQ` over
        the same codes (C++, several times cheaper than re-ranking in numpy), or the flat
        `IndexPQ` itself when it is the scan.
        """
        self._scan = scan_index(self.codebooks, packed)
        self._exact: faiss.IndexPQ | None = None
        self._ranker: faiss.Index = self._scan
        if not isinstance(self._scan, faiss.IndexPQ):
            self._exact = flat_pq_index(self.codebooks, packed)
            refine = faiss.IndexRefine(self._scan, self._exact)
            self._ranker = refine
        self._params_by_fetch: dict[int, faiss.SearchParameters] = {}

    # ---- size and contents -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size - self._removed

    @property
    def tombstones(self) -> int:
        return self._removed

    @property
    def last_id(self) -> int:
        return int(self._ids[self._size - 1]) if self._size else 0

    def live_arrays(self) -> tuple[IdArray, CodeArray, Columns]:
        """Ids, codes and columns of the live items (copies), in id order."""
        keep = self._alive[: self._size]
        terms = self._terms
        return (
            self._ids[: self._size][keep].copy(),
            self._codes[: self._size][keep].copy(),
            Columns(
                terms.labels[: self._size][keep].copy(),
                terms.datasets[: self._size][keep].copy(),
                terms.groups[: self._size][keep].copy(),
            ),
        )

    def live_id_sum(self) -> int:
        """Sum of the live ids: with the count, a cheap check against SQLite's id set."""
        return int(self._ids[: self._size][self._alive[: self._size]].sum())

    def position_of(self, item_ids: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Positions of the given ids, -1 for ids absent or removed."""
        wanted = np.asarray(item_ids, dtype=np.int64).ravel()
        ids = self._ids[: self._size]
        positions = np.searchsorted(ids, wanted)
        inside = positions < self._size
        found = np.zeros(wanted.shape, dtype=bool)
        found[inside] = ids[positions[inside]] == wanted[inside]
        found[found] = self._alive[positions[found]]
        return np.where(found, positions, -1)

    def codes_at(self, positions: npt.NDArray[np.intp]) -> CodeArray:
        """(N, M) codes at the given positions (copies)."""
        codes: CodeArray = self._codes[positions]
        return codes

    def memory_bytes(self) -> int:
        """Bytes held by the arrays and the FAISS scan index (capacity included)."""
        arrays = (self._codes, self._ids, self._alive, *self._column_arrays())
        scan: Any = faiss.downcast_index(self._scan)
        exact = 0 if self._exact is None else int(self._exact.codes.size())
        return sum(a.nbytes for a in arrays) + int(scan.codes.size()) + exact

    def _column_arrays(self) -> tuple[TermArray, TermArray, TermArray]:
        return self._terms.labels, self._terms.datasets, self._terms.groups

    # ---- changes -------------------------------------------------------------------------------

    def append(
        self, codes: CodeArray, ids: IdArray, terms: Columns, packed: CodeArray | None = None
    ) -> None:
        """Add items whose ids are all larger than every id already held; ``packed``: the same
        codes packed (`pack_codes`), when the caller has them already."""
        count = len(ids)
        if count == 0:
            return
        if (self._size and int(ids[0]) <= self.last_id) or np.any(np.diff(ids) <= 0):
            raise ValueError("ids must be appended in increasing order")
        self._reserve(self._size + count)
        end = self._size + count
        self._codes[self._size : end] = codes
        self._ids[self._size : end] = ids
        for target, source in zip(self._column_arrays(), _arrays_of(terms), strict=True):
            target[self._size : end] = source
        self._alive[self._size : end] = True
        self._add_to_faiss(pack_codes(codes, self.codebooks.shape[1]) if packed is None else packed)
        self._size = end

    def _add_to_faiss(self, packed: CodeArray) -> None:
        """Give FAISS the codes themselves: handing it decoded vectors to encode again cost
        3.3 us a row, a third of indexing a feature archive."""
        if self._exact is None:
            self._scan.add_sa_codes(packed)
            return
        # FastScan takes no codes (add_sa_codes is not implemented for it), but merges another
        # FastScan index built over them; its re-ranker is the flat index beside it.
        self._scan.merge_from(scan_index(self.codebooks, packed), 0)
        self._exact.add_sa_codes(packed)
        self._ranker.ntotal = self._exact.ntotal

    def remove(self, item_ids: npt.ArrayLike) -> int:
        """Tombstone the given ids; returns how many live items were removed."""
        positions = self.position_of(item_ids)
        positions = np.unique(positions[positions >= 0])
        self._alive[positions] = False
        self._removed += len(positions)
        return len(positions)

    def compact(self) -> None:
        """Drop tombstones and rebuild the scan index from the remaining codes."""
        if not self._removed:
            return
        ids, codes, terms = self.live_arrays()
        self.reset(codes, ids, terms)

    def reset(self, codes: CodeArray, ids: IdArray, terms: Columns) -> None:
        """Replace the contents in one bulk build (used on load and by `compact`)."""
        self._size = len(ids)
        self._codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self._ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._terms = Columns(*(np.ascontiguousarray(a, dtype=np.int32) for a in _arrays_of(terms)))
        self._alive = np.ones(self._size, dtype=bool)
        self._removed = 0
        self._build_scan(pack_codes(self._codes, self.codebook_size))

    def _reserve(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        # Grow by half so that repeated small adds stay amortised O(1) without doubling memory.
        new_capacity = max(needed, capacity + capacity // 2, 1024)
        self._codes = _grown(self._codes, new_capacity)
        self._ids = _grown(self._ids, new_capacity)
        self._alive = _grown(self._alive, new_capacity)
        self._terms = Columns(*(_grown(a, new_capacity) for a in self._column_arrays()))

    # ---- search --------------------------------------------------------------------------------

    def eligible(self, term_filter: TermFilter | Nothing) -> BoolArray | Everything:
        """Mask of the items a search may return; `ALL` when every position is allowed.

        `NONE` (a label or dataset that was never stored) gives a mask no item passes.
        """
        if term_filter is NONE:
            return np.zeros(self._size, dtype=bool)
        if not term_filter.constrained and not self._removed:
            return ALL
        mask = self._alive[: self._size].copy()
        terms, n = self._terms, self._size
        if term_filter.label is not ALL:
            mask &= terms.labels[:n] == term_filter.label
        if term_filter.dataset is not ALL:
            mask &= terms.datasets[:n] == term_filter.dataset
        if term_filter.exclude_group is not NONE:
            mask &= terms.groups[:n] != term_filter.exclude_group
        return mask

    def search(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        eligible: BoolArray | Everything = ALL,
        *,
        normalised: bool = False,
    ) -> tuple[FloatArray, IdArray]:
        """Top-k exact ADC scores and ids per query, best first, ties broken by smaller id.

        Rows hold fewer than k results (score -inf, id -1) only when fewer items are eligible.
        ``normalised``: the queries are float32, C-ordered, their sub-vectors already normalised
        by `normalise_subvectors` (a sharded index does it once for all its shards).
        """
        if k < 1:
            raise IndexInputError(f"k must be at least 1, got {k}")
        unit = (
            np.asarray(queries, dtype=np.float32)
            if normalised
            else normalise_subvectors(queries, self.num_codebooks)
        )
        available = self._size if eligible is ALL else int(np.count_nonzero(eligible))
        found = min(k, available)
        if found == 0:
            top_scores = np.empty((len(unit), 0), dtype=np.float32)
            top_positions = np.empty((len(unit), 0), dtype=np.intp)
        elif eligible is ALL:
            top_scores, top_positions = self._ranked(unit, found)
        elif available <= max(EXACT_SCAN_MIN, self._size // EXACT_SCAN_DIVISOR):
            top_scores, top_positions = self._exact_scan(unit, np.flatnonzero(eligible), found)
        else:
            top_scores, top_positions = self._masked_shortlist(unit, found, available, eligible)
        top_ids = self._ids[top_positions]
        if found == k:
            return top_scores, top_ids
        scores = np.full((len(unit), k), -np.inf, dtype=np.float32)
        ids = np.full((len(unit), k), -1, dtype=np.int64)
        scores[:, :found], ids[:, :found] = top_scores, top_ids
        return scores, ids

    def scores_of(self, query: npt.NDArray[np.floating], item_ids: npt.ArrayLike) -> FloatArray:
        """Exact ADC scores of one query (1, D) against the given items; -inf where absent."""
        unit = normalise_subvectors(query, self.num_codebooks)
        positions = self.position_of(item_ids)
        present = positions >= 0
        scores = np.full(positions.shape, -np.inf, dtype=np.float32)
        if present.any():
            tables = unit_lookup_tables(unit, self.codebooks)
            scores[present] = gathered_adc(tables, self._codes, positions[present][None, :])[0]
        return scores

    def _ranked(self, unit: FloatArray, found: int) -> tuple[FloatArray, npt.NDArray[np.intp]]:
        """Every position live, nothing filtered: FAISS's exact ranker does all the work.

        FAISS is asked for `TIE_MARGIN` entries beyond k and leaves the order of equal scores
        open. Rows without equal neighbours are final; otherwise a run tied with the k-th entry
        may go on past what was fetched, so the fetch grows until every such run ends inside
        it (each growth is another full scan), and tied entries are put in position order.
        """
        fetch = min(self._size, found + TIE_MARGIN)
        scores, positions = self._ranker.search(unit, fetch, params=self._ranker_params(fetch))
        if not np.count_nonzero(scores[:, 1:] == scores[:, :-1]):
            return scores[:, :found], positions[:, :found]
        while fetch < self._size and np.count_nonzero(scores[:, -1] == scores[:, found - 1]):
            fetch = min(self._size, fetch * 4)
            scores, positions = self._ranker.search(unit, fetch, params=self._ranker_params(fetch))
        return _best_first(scores, positions, found)

    def _ranker_params(self, fetch: int) -> faiss.SearchParameters | None:
        """A shortlist of ``fetch + RERANK_MARGIN`` for the re-rank (FAISS sizes it as a factor
        of the k asked for); None when the ranker is a flat `IndexPQ`, which takes none."""
        if self._exact is None:
            return None
        params = self._params_by_fetch.get(fetch)
        if params is None:
            refine_params = faiss.IndexRefineSearchParameters()
            # The half keeps int(fetch * factor) from rounding one short.
            refine_params.k_factor = (fetch + RERANK_MARGIN + 0.5) / fetch
            self._params_by_fetch[fetch] = params = refine_params
        return params

    def _exact_scan(
        self, unit: FloatArray, positions: npt.NDArray[np.intp], found: int
    ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
        tables = unit_lookup_tables(unit, self.codebooks)
        candidates = np.broadcast_to(positions, (len(tables), len(positions)))
        return _best_first(gathered_adc(tables, self._codes, candidates), candidates, found)

    def _masked_shortlist(
        self, unit: FloatArray, found: int, available: int, eligible: BoolArray
    ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
        """A FastScan shortlist grown until k eligible items survive the mask, then re-ranked
        exactly in numpy (FAISS's re-rank cannot skip the masked items)."""
        fetch = min(self._size, math.ceil((found + RERANK_MARGIN) * self._size / available))
        while True:
            _, candidates = self._scan.search(unit, fetch)
            valid = (candidates >= 0) & eligible[np.maximum(candidates, 0)]
            if fetch == self._size or valid.sum(axis=1).min() >= found:
                break
            fetch = min(self._size, fetch * 4)
        tables = unit_lookup_tables(unit, self.codebooks)
        exact = gathered_adc(tables, self._codes, np.where(valid, candidates, 0))
        exact[~valid] = -np.inf
        return _best_first(exact, np.where(valid, candidates, self._size), found)


def _best_first(
    scores: FloatArray, positions: npt.NDArray[np.integer], found: int
) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """The `found` best (score desc, position asc) of each row."""
    if scores.shape[1] > 4 * found:
        # Keep every entry tied with the k-th best so the tie-break below stays exact.
        kth = -np.partition(-scores, found - 1, axis=1)[:, found - 1 : found]
        keep_width = int((scores >= kth).sum(axis=1).max())
        order = np.argpartition(-scores, keep_width - 1, axis=1)[:, :keep_width]
        rows = np.arange(len(scores))[:, None]
        scores, positions = scores[rows, order], np.asarray(positions)[rows, order]
    order = np.lexsort((positions, -scores), axis=1)[:, :found]
    rows = np.arange(len(scores))[:, None]
    return scores[rows, order], np.asarray(positions)[rows, order].astype(np.intp)


def _arrays_of(terms: Columns) -> tuple[TermArray, TermArray, TermArray]:
    return terms.labels, terms.datasets, terms.groups


def _grown(array: npt.NDArray[_Element], capacity: int) -> npt.NDArray[_Element]:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
