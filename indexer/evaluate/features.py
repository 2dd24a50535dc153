"""Retrieval quality of codes over a feature archive (vectors a backbone already produced).

Queries and archive never share a patient (group): the queries are the held-out part's items,
the archive the other parts' items, so no query can find its own patient's regions. Every method
returns a ranking (Q, depth) of archive rows, best first; `ranking_quality` turns it into P@k,
mAP@k, majority vote of the top 5 and recall of the float top 10 (the share of the exact cosine
neighbours that the method's top 10 keeps).

Baselines on the same vectors: exact cosine on the centred vectors, FAISS `IndexPQ` (k-means
codebooks) and OPQ at the same bits, LanceDB's IVF-PQ at the same code length, and the optional
second stage: a shortlist re-ranked by 8-bit scalar-quantised vectors, with the index's own
quantiser and re-rank (`indexer.index.second_stage`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import torch

from indexer.index.pq import (
    CodeArray,
    adc_scores,
    flat_pq_index,
    pack_codes,
    unit_lookup_tables,
)
from indexer.index.second_stage import FineQuantiser, rerank_shortlists
from indexer.ingest.feature_table import TCGA_COLUMNS, FeatureTable, read_feature_table
from indexer.learn.splits import GroupSplit
from model.feature_spq import FeatureSPQModel

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
LabelArray = npt.NDArray[np.str_]

FLOAT_TOP = 10


# The arrays of a feature archive (vectors, slide, group, label per row), read by the one reader.
FeatureArchive = FeatureTable


def load_region_archive(folder: Path, limit: int | None = None) -> FeatureArchive:
    """``regions.npy`` (N, D) with ``regions.csv`` (slide_id, patient_id, cancer_type, ...),
    the layout of ``tcga-hipt-regions-192d``; ``limit`` keeps the first rows (whole slides
    are contiguous, so only the last slide may be cut)."""
    return read_feature_table(folder / "regions.npy", TCGA_COLUMNS, limit)


@dataclass(frozen=True)
class QueryArchiveSplit:
    """Query rows (held-out groups) and archive rows (all groups but theirs)."""

    queries: IntArray
    archive: IntArray


def query_archive_split(
    data: FeatureArchive, split: GroupSplit, part: str, max_queries: int | None, seed: int
) -> QueryArchiveSplit:
    """Queries from ``part`` ("validation" or "test"); the archive is everything that is neither
    in ``part`` nor in test while choosing on validation (train + validation for test, train
    alone for validation), so held-out patients are never on both sides and test never shapes a
    choice. ``max_queries`` draws that many query rows with ``seed``."""
    if part not in ("validation", "test"):
        raise ValueError(f"part must be validation or test, got {part!r}")
    queries = data.rows_of(getattr(split, part))
    archive_groups = split.train if part == "validation" else split.train + split.validation
    archive = data.rows_of(archive_groups)
    if max_queries is not None and len(queries) > max_queries:
        picks = np.random.default_rng(seed).choice(len(queries), max_queries, replace=False)
        queries = np.sort(queries[picks])
    return QueryArchiveSplit(queries=queries, archive=archive)


def centre_and_normalise(vectors: FloatArray, mean: FloatArray) -> FloatArray:
    """Subtract ``mean`` and scale each row to unit length (cosine = inner product)."""
    centred = np.ascontiguousarray(vectors - mean, dtype=np.float32)
    faiss.normalize_L2(centred)
    return centred


@dataclass(frozen=True)
class Quality:
    precision_at_10: float
    map_at_10: float
    majority_vote_at_5: float
    float_recall_at_10: float

    def as_dict(self) -> dict[str, float]:
        return {
            "p_at_10": self.precision_at_10,
            "map_at_10": self.map_at_10,
            "mv_at_5": self.majority_vote_at_5,
            "float_recall_at_10": self.float_recall_at_10,
        }


def ranking_quality(
    ranked: IntArray,
    query_labels: LabelArray,
    archive_labels: LabelArray,
    float_ranked: IntArray,
) -> Quality:
    """Metrics of rankings (Q, >=10) of archive rows against the exact float ranking.

    AP@10 is the hashing literature's (mean of P@i over the relevant ranks of the top 10, 0 with
    none relevant), as `indexer.evaluate.metrics`; majority vote ties go to the label ranked first.
    """
    top = ranked[:, :10]
    relevant = archive_labels[top] == query_labels[:, None]
    hits = relevant.astype(np.float64)
    precision_at_rank = hits.cumsum(axis=1) / np.arange(1, 11)
    found = hits.sum(axis=1)
    average_precision = np.where(
        found > 0, (precision_at_rank * hits).sum(axis=1) / np.maximum(found, 1), 0.0
    )
    vote = [_majority(archive_labels[row[:5]]) for row in top]
    truth = float_ranked[:, :FLOAT_TOP]
    recall = [len(np.intersect1d(a, b)) / FLOAT_TOP for a, b in zip(top, truth, strict=True)]
    return Quality(
        precision_at_10=float(hits.mean()),
        map_at_10=float(average_precision.mean()),
        majority_vote_at_5=float(np.mean(np.asarray(vote) == query_labels)),
        float_recall_at_10=float(np.mean(recall)),
    )


def _majority(labels: LabelArray) -> str:
    names, counts = np.unique(labels, return_counts=True)
    best = counts.max()
    # Ties: the tied label ranked first.
    return str(next(label for label in labels if counts[names == label][0] == best))


def exact_ranking(queries: FloatArray, archive: FloatArray, depth: int) -> IntArray:
    """Rows of ``archive`` by inner product with each query (unit vectors: cosine), best first."""
    index = faiss.IndexFlatIP(archive.shape[1])
    index.add(np.ascontiguousarray(archive))
    _, ranked = index.search(np.ascontiguousarray(queries), depth)
    return ranked.astype(np.int64)


def pq_geometry(bits: int, nbits: int) -> int:
    """Sub-spaces M for ``bits``-bit codes of ``nbits``-bit codewords."""
    if bits % nbits:
        raise ValueError(f"{bits} bits is not a whole number of {nbits}-bit codewords")
    return bits // nbits


def faiss_pq_index(
    train: FloatArray, bits: int, nbits: int, rotate: bool, seed: int = 0
) -> faiss.Index:
    """FAISS IndexPQ (inner product over k-means codebooks) or OPQ + IndexPQ, trained."""
    dim = train.shape[1]
    num_codebooks = pq_geometry(bits, nbits)
    pq = faiss.IndexPQ(dim, num_codebooks, nbits, faiss.METRIC_INNER_PRODUCT)
    pq.pq.cp.seed = seed
    index: faiss.Index = pq
    if rotate:
        index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, num_codebooks), pq)
    index.train(np.ascontiguousarray(train))
    return index


def index_ranking(
    index: faiss.Index, archive: FloatArray, queries: FloatArray, depth: int
) -> IntArray:
    index.add(np.ascontiguousarray(archive))
    _, ranked = index.search(np.ascontiguousarray(queries), depth)
    return ranked.astype(np.int64)


def rerank(
    queries: FloatArray,
    shortlist: IntArray,
    fine_codes: npt.NDArray[np.uint8],
    quantizer: FineQuantiser,
) -> IntArray:
    """Each query's shortlist (Q, S) re-ordered by inner product with the decoded fine codes:
    the index's own second stage (`indexer.index.second_stage.rerank_shortlists`)."""
    _, reordered = rerank_shortlists(
        queries, shortlist, lambda ids: fine_codes[ids], quantizer, shortlist.shape[1]
    )
    return reordered


def lancedb_ranking(
    archive: FloatArray, queries: FloatArray, bits: int, depth: int, partitions: int = 256
) -> IntArray:
    """LanceDB's IVF-PQ (``partitions`` coarse cells, 8-bit PQ of the residual, ``bits`` per
    code), searched over every cell with no refinement: the code alone ranks, beside the cell."""
    import lancedb
    import pyarrow as pa  # type: ignore[import-untyped]

    num_sub_vectors = pq_geometry(bits, 8)
    with tempfile.TemporaryDirectory() as folder:
        database = lancedb.connect(folder)
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(archive.reshape(-1), type=pa.float32()), archive.shape[1]
        )
        table = database.create_table(
            "archive",
            pa.table({"row": pa.array(np.arange(len(archive)), type=pa.int64()), "vector": column}),
        )
        table.create_index(
            metric="cosine",
            num_partitions=partitions,
            num_sub_vectors=num_sub_vectors,
            num_bits=8,
        )
        ranked = np.full((len(queries), depth), -1, dtype=np.int64)
        for position, query in enumerate(queries):
            found = (
                table.search(query)
                .nprobes(partitions)  # type: ignore[attr-defined]
                .limit(depth)
                .select(["row"])
                .to_arrow()["row"]
                .to_numpy()
            )
            ranked[position, : len(found)] = found
        return ranked


def model_codes(model: FeatureSPQModel, vectors: FloatArray, batch: int = 65_536) -> CodeArray:
    """(N, M) uint8 hard codes of ``vectors`` through the feature model, in batches."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(vectors), batch):
            rows = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch]))
            parts.append(model.assign_codes(rows).numpy().astype(np.uint8))
    return np.concatenate(parts) if parts else np.zeros((0, model.card.num_codebooks), np.uint8)


def model_descriptors(model: FeatureSPQModel, vectors: FloatArray) -> FloatArray:
    with torch.no_grad():
        descriptors: FloatArray = model.encode(
            torch.from_numpy(np.ascontiguousarray(vectors))
        ).numpy()
    return descriptors


def spq_index(model: FeatureSPQModel, codes: CodeArray) -> faiss.IndexPQ:
    """The search the index runs: FAISS inner-product `IndexPQ` over the model's codewords."""
    codebooks = model.codebooks().detach().numpy().astype(np.float32)
    return flat_pq_index(codebooks, pack_codes(codes, model.card.codebook_size))


def spq_ranking(
    model: FeatureSPQModel, archive: FloatArray, queries: FloatArray, depth: int
) -> IntArray:
    """Archive rows by ADC (sum of per-sub-space cosines) of each query's descriptor."""
    index = spq_index(model, model_codes(model, archive))
    _, ranked = index.search(model_descriptors(model, queries), depth)
    return ranked.astype(np.int64)


def coarse_cells(descriptors: FloatArray, cells: int, seed: int = 0) -> FloatArray:
    """(cells, D) unit centroids of spherical k-means on unit-scaled ``descriptors``: a coarse
    partition whose cell each item is filed under (grouped by cell, it costs no code bits)."""
    unit = np.ascontiguousarray(descriptors, dtype=np.float32).copy()
    faiss.normalize_L2(unit)
    kmeans = faiss.Kmeans(unit.shape[1], cells, niter=20, spherical=True, seed=seed)
    kmeans.train(unit)
    centroids: FloatArray = np.asarray(kmeans.centroids, dtype=np.float32)
    return centroids


def cell_of(descriptors: FloatArray, centroids: FloatArray) -> IntArray:
    """The most cosine-similar centroid of each descriptor."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    unit = np.ascontiguousarray(descriptors, dtype=np.float32).copy()
    faiss.normalize_L2(unit)
    _, found = index.search(unit, 1)
    return found[:, 0].astype(np.int64)


def cell_and_code_ranking(
    model: FeatureSPQModel,
    archive: FloatArray,
    queries: FloatArray,
    centroids: FloatArray,
    weight: float,
    depth: int,
) -> IntArray:
    """Archive rows by ADC / M + ``weight`` x cos(query, the item's cell centroid), every cell
    searched: the cell adds what a code of the same bits cannot hold (the prototype of a coarse
    partition; LanceDB's IVF-PQ keeps its cell beside the code in the same way)."""
    archive_descriptors = model_descriptors(model, archive)
    cells = cell_of(archive_descriptors, centroids)
    codes = model_codes(model, archive)
    codebooks = model.codebooks().detach().numpy().astype(np.float32)
    query_descriptors = model_descriptors(model, queries)
    unit_queries = query_descriptors / np.linalg.norm(query_descriptors, axis=1, keepdims=True)
    ranked = np.empty((len(queries), depth), dtype=np.int64)
    for start in range(0, len(queries), 100):
        block = slice(start, start + 100)
        tables = unit_lookup_tables(np.ascontiguousarray(query_descriptors[block]), codebooks)
        scores = adc_scores(tables, codes) / model.card.num_codebooks
        scores += weight * (unit_queries[block] @ centroids.T)[:, cells]
        top = np.argpartition(-scores, depth, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        ranked[block] = np.take_along_axis(top, order, axis=1)
    return ranked
