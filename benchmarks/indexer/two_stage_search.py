"""One query through a whole feature index at scale, with and without its second stage.

    nice -n 10 python -m benchmarks.indexer.two_stage_search [--items 10000000]
        [--shortlist-factor 10] [--queries 50] [--out benchmarks/results/two_stage_search.json]

Builds a real index directory the way `histosearch index --source features --second-stage sq8`
does (`ArchiveIndex.add_rows` of the feature model's descriptors and centred rows, stored as row
blocks in SQLite, then one snapshot with the memory-mapped finer codes) of ``--items`` rows: the
147,503 real HIPT vectors of ``tcga-hipt-regions-192d`` resampled with Gaussian noise of 10% of
each dimension's spread (a synthetic archive with the real distribution). The feature model is
the one `histosearch train --source features` makes by default (64 bits: 8 codebooks of 256
codewords; ``--codebook-size 16`` gives 16 of 16), with random weights: a query's cost does not
depend on them.

Then, single thread, the median of ``--queries`` queries (real held-out rows), the methods
taking turns query by query:

- ``faiss``: FAISS's own search over the same codes with the structure the index keeps: the
  flat `IndexPQ` for 8-bit codewords (K=256, the default), or `IndexRefine` of
  `IndexPQFastScan` by a flat `IndexPQ` with the same re-rank margin for 4-bit ones (K=16,
  where ``faiss_flat`` gives the exact flat scan for reference);
- ``index_ids_only``: `ArchiveIndex.search` of the compact codes, ids and scores only (what
  FAISS's search gives);
- ``index``: the same with the hits' records read from SQLite (what a user gets);
- ``index_two_stage``: the same with the second stage: a shortlist of factor x k re-ranked by
  the finer codes read from the memory-mapped snapshot.

Results: a table on stdout and ``benchmarks/results/two_stage_search.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from benchmarks.indexer.feature_indexing import feature_model
from indexer.index.codetable import RERANK_MARGIN
from indexer.index.pq import flat_pq_index, normalise_subvectors, pack_codes, scan_index
from indexer.index.row_blocks import FeatureRows
from indexer.index.second_stage import SecondStageSettings
from indexer.index.store import ArchiveIndex
from model.feature_encoder import FeatureEncoder
from model.feature_spq import save_feature_checkpoint

K = 10
_CHUNK = 65_536


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    vectors = np.load(arguments.data / "regions.npy").astype(np.float32)
    generator = np.random.default_rng(0)
    queries = vectors[generator.choice(len(vectors), arguments.queries, replace=False)]
    model = feature_model(arguments.codebook_size)
    model.feature_mean.copy_(torch.from_numpy(vectors.mean(axis=0)))
    encoder = FeatureEncoder(model, torch.device("cpu"))
    with tempfile.TemporaryDirectory(dir=arguments.folder) as folder:
        checkpoint = Path(folder) / "model.pt"
        save_feature_checkpoint(model, checkpoint)
        settings = SecondStageSettings(shortlist_factor=arguments.shortlist_factor)
        index = ArchiveIndex.create(Path(folder) / "index", checkpoint, settings)
        with index:
            build_seconds = fill(index, encoder, vectors, arguments.items, generator)
            medians = timings(index, encoder, queries)
            report = {
                "benchmark": "two_stage_search",
                "items": len(index),
                "source": "tcga-hipt-regions-192d resampled with 10% noise",
                "bits": model.card.bits,
                "codebook_size": model.card.codebook_size,
                "shortlist": index.shortlist_factor * K,
                "k": K,
                "threads": 1,
                "queries": arguments.queries,
                "build_s": build_seconds,
                "median_ms": medians,
                "index_ids_only_over_faiss": medians["index_ids_only"] / medians["faiss"],
                "index_over_faiss": medians["index"] / medians["faiss"],
                "two_stage_over_faiss": medians["index_two_stage"] / medians["faiss"],
            }
    for name, value in medians.items():
        print(f"{name:<16} {value:8.2f} ms")
    print(
        f"index ids only / faiss {report['index_ids_only_over_faiss']:.3f}, "
        f"index / faiss {report['index_over_faiss']:.3f}, "
        f"two-stage / faiss {report['two_stage_over_faiss']:.3f}"
    )
    write_result(arguments.out, report)
    print(f"wrote {arguments.out}")


def fill(
    index: ArchiveIndex,
    encoder: FeatureEncoder,
    vectors: np.ndarray,
    items: int,
    generator: np.random.Generator,
) -> float:
    """Add ``items`` resampled rows a chunk (one block) at a time, then snapshot; seconds."""
    spread = vectors.std(axis=0)
    started = time.perf_counter()
    for start in range(0, items, _CHUNK):
        count = min(_CHUNK, items - start)
        noise = generator.standard_normal((count, vectors.shape[1]), dtype=np.float32)
        rows = vectors[generator.integers(0, len(vectors), count)] + 0.1 * spread * noise
        block = synthetic_block(start, count)
        index.add_rows(encoder.descriptors(rows), [block], fine=encoder.centred(rows))
        if start // _CHUNK % 16 == 0:
            print(f"  {start + count:,} rows", flush=True)
    index.flush()
    return time.perf_counter() - started


def synthetic_block(start: int, count: int) -> FeatureRows:
    """Rows of one synthetic file: slides of 20 rows, patients of 2 slides, 25 labels."""
    slides = [f"slide-{(start + n) // 20}" for n in range(count)]
    return FeatureRows(
        source=f"part-{start // _CHUNK}.npy",
        archive="resampled",
        dataset="resampled",
        rows=np.arange(count, dtype=np.int64),
        slide_ids=slides,
        labels=[f"type-{(start + n) // 20 % 25}" for n in range(count)],
        groups=[f"patient-{(start + n) // 40}" for n in range(count)],
    )


def timings(index: ArchiveIndex, encoder: FeatureEncoder, queries: np.ndarray) -> dict[str, float]:
    descriptors = encoder.descriptors(queries)
    centred = encoder.centred(queries)
    unit = normalise_subvectors(descriptors, index.num_codebooks)
    searches = faiss_searches(index, unit)
    searches |= {
        "index_ids_only": lambda n: index.search(descriptors[n : n + 1], K, with_records=False),
        "index": lambda n: index.search(descriptors[n : n + 1], K),
        "index_two_stage": lambda n: index.search(
            descriptors[n : n + 1], K, fine_queries=centred[n : n + 1]
        ),
    }
    for search in searches.values():  # page in the snapshot and warm the caches
        search(0)
    return median_ms(searches, len(queries))


def faiss_searches(index: ArchiveIndex, unit: np.ndarray) -> dict[str, Callable[[int], object]]:
    """FAISS's own search over the index's codes, built as the index builds its own."""
    packed = pack_codes(index.codes_of(np.arange(1, len(index) + 1)), index.codebook_size)
    flat = flat_pq_index(index.codebooks, packed)
    scan = scan_index(index.codebooks, packed)
    if isinstance(scan, faiss.IndexPQ):  # K=256: the flat IndexPQ is what the index keeps
        return {"faiss": lambda n: flat.search(unit[n : n + 1], K + 1)}
    refine = faiss.IndexRefine(scan, flat)  # K=16: FastScan re-ranked by the flat IndexPQ
    params = faiss.IndexRefineSearchParameters()
    params.k_factor = (K + 1 + RERANK_MARGIN + 0.5) / (K + 1)
    return {
        "faiss": lambda n: refine.search(unit[n : n + 1], K + 1, params=params),
        "faiss_flat": lambda n: flat.search(unit[n : n + 1], K),
    }


def median_ms(searches: dict[str, Callable[[int], object]], count: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in searches}
    for n in range(count):
        for name, search in searches.items():
            started = time.perf_counter()
            search(n)
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * float(np.median(values)) for name, values in times.items()}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--shortlist-factor", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--codebook-size", type=int, choices=(16, 256), default=256)
    parser.add_argument("--data", type=Path, default=shared_data_root() / "tcga-hipt-regions-192d")
    parser.add_argument("--folder", type=Path, default=None, help="where the index is written")
    parser.add_argument("--out", type=Path, default=RESULTS / "two_stage_search.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
