"""Seeded codebooks, descriptors and items shared by the archive-index tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.index.pq import FloatArray, decode
from indexer.index.store import ArchiveIndex, NewItem
from support.data import shared_data_root

M, K, D_SUB = 8, 16, 16
DIM = M * D_SUB
SHARED_DATA = shared_data_root()


def unit_codebooks(seed: int = 0, codebook_size: int = K) -> FloatArray:
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal((M, codebook_size, D_SUB)).astype(np.float32)
    unit: FloatArray = codebooks / np.linalg.norm(codebooks, axis=2, keepdims=True)
    return unit


def descriptors_near_codewords(
    count: int, codebooks: FloatArray, seed: int = 1, noise: float = 0.6
) -> FloatArray:
    """Descriptors scattered around random codewords, as a trained model's would be."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebooks.shape[1], (count, M)).astype(np.uint8)
    vectors = decode(codes, codebooks) + noise * rng.standard_normal((count, DIM))
    return vectors.astype(np.float32)


def items(count: int, start: int = 0, labels: int = 3, groups: int = 7) -> list[NewItem]:
    return [
        NewItem(
            source=f"slide-{i % groups}/tile-{i}.png",
            content_hash=f"hash-{i}",
            label=f"class-{i % labels}",
            group=f"patient-{i % groups}",
            dataset="synthetic" if i % 2 else "other",
            tile=(i, 2 * i, 64, 64),
            source_size=(1024, 768),
            thumbnail=b"\xff\xd8jpeg",
            extra={"n": i},
        )
        for i in range(start, start + count)
    ]


def new_index(directory: Path, seed: int = 0, codebook_size: int = K) -> ArchiveIndex:
    return ArchiveIndex.create_from_codebooks(
        directory,
        unit_codebooks(seed, codebook_size),
        card={"backbone": "synthetic", "num_codebooks": M, "codebook_size": codebook_size},
    )
