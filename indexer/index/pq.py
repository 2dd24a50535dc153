"""Product-quantisation maths over the model's own codebooks, and FAISS structures built on them.

Scoring is cosine per sub-space: codewords are unit length, each query sub-vector is L2-normalised,
and an item scores the sum over sub-spaces of <query_m, codeword_m[code_m]> (asymmetric distance
computation, ADC: the query is never quantised). FAISS computes the same with an inner-product
`IndexPQ` whose centroids are the model's codewords.

FAISS is never asked to train: its codebooks are copied from the model, so its codes and the
model's codes are the same numbers.
"""

from __future__ import annotations

import hashlib
import math

import faiss
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
CodeArray = npt.NDArray[np.uint8]
IdArray = npt.NDArray[np.int64]


def bits_per_code(codebook_size: int) -> int:
    """log2(K) for a power-of-two K up to 256 (in memory a code takes one byte per sub-space)."""
    if codebook_size < 2 or codebook_size > 256 or codebook_size & (codebook_size - 1):
        raise ValueError(f"codebook size must be a power of two in [2, 256], got {codebook_size}")
    return int(math.log2(codebook_size))


def code_size_bytes(num_codebooks: int, codebook_size: int) -> int:
    """Bytes per packed code, as FAISS's ProductQuantizer stores it."""
    return (num_codebooks * bits_per_code(codebook_size) + 7) // 8


def check_codebooks(codebooks: npt.NDArray[np.floating]) -> FloatArray:
    """Return the codebooks as C-contiguous float32 (M, K, d) with unit-length codewords."""
    array = np.ascontiguousarray(codebooks, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"codebooks must have shape (M, K, d), got {array.shape}")
    bits_per_code(array.shape[1])
    norms = np.linalg.norm(array, axis=2)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(
            "codewords must be unit length for cosine ADC "
            f"(norms range {norms.min():.4f}..{norms.max():.4f})"
        )
    return array


def codebook_fingerprint(codebooks: FloatArray) -> str:
    """A hash of the codebooks' shape and exact float32 bytes (equal codebooks, equal hash)."""
    digest = hashlib.sha256(str(codebooks.shape).encode())
    digest.update(np.ascontiguousarray(codebooks, dtype=np.float32).tobytes())
    return digest.hexdigest()


def normalise_subvectors(vectors: npt.NDArray[np.floating], num_codebooks: int) -> FloatArray:
    """L2-normalise each of the M sub-vectors of every row: the cosine rule of the model's loss.

    Returns a new array; an all-zero sub-vector (a blank image can give one) stays zero.
    """
    unit: FloatArray = np.array(vectors, dtype=np.float32, order="C")
    if unit.ndim != 2 or unit.shape[1] % num_codebooks:
        raise ValueError(f"expected (N, M*d) descriptors with M={num_codebooks}, got {unit.shape}")
    # FAISS's in-place kernel: several times faster than numpy for the one-query case.
    faiss.normalize_L2(unit.reshape(-1, unit.shape[1] // num_codebooks))
    return unit


def lookup_tables(queries: npt.NDArray[np.floating], codebooks: FloatArray) -> FloatArray:
    """(Q, M, K) cosine of each normalised query sub-vector with each codeword."""
    return unit_lookup_tables(normalise_subvectors(queries, codebooks.shape[0]), codebooks)


def unit_lookup_tables(unit_queries: FloatArray, codebooks: FloatArray) -> FloatArray:
    """`lookup_tables` for queries whose sub-vectors are already normalised."""
    num_codebooks, _, codeword_dim = codebooks.shape
    by_subspace = unit_queries.reshape(-1, num_codebooks, codeword_dim).transpose(1, 0, 2)
    # (M, Q, d) @ (M, d, K): a batched matmul, much faster than einsum for these small shapes.
    tables = np.matmul(by_subspace, codebooks.transpose(0, 2, 1)).transpose(1, 0, 2)
    return np.ascontiguousarray(tables, dtype=np.float32)


def assign_codes(descriptors: npt.NDArray[np.floating], codebooks: FloatArray) -> CodeArray:
    """(N, M) index of the most similar codeword per sub-space (nearest by cosine)."""
    num_codebooks, _, codeword_dim = codebooks.shape
    unit = normalise_subvectors(descriptors, num_codebooks)
    codes: CodeArray = np.empty((len(unit), num_codebooks), dtype=np.uint8)
    # One sub-space at a time: the (N, M, K) tables and their transposed copy cost 2-5x more
    # CPU than the matmuls themselves with K=256 (and 1.2 GB for 147k rows).
    for subspace in range(num_codebooks):
        part = unit[:, subspace * codeword_dim : (subspace + 1) * codeword_dim]
        codes[:, subspace] = np.argmax(part @ codebooks[subspace].T, axis=1)
    return codes


def adc_scores(tables: FloatArray, codes: CodeArray) -> FloatArray:
    """(Q, N) sum over sub-spaces of the table entry each code selects."""
    candidates = np.broadcast_to(np.arange(len(codes)), (len(tables), len(codes)))
    return gathered_adc(tables, codes, candidates)


def gathered_adc(
    tables: FloatArray, codes: CodeArray, candidates: npt.NDArray[np.integer]
) -> FloatArray:
    """(Q, F) ADC score of each query's own candidate rows of ``codes``.

    One flat gather of the (Q, M) table entries, then one sum over M: every caller sums the same
    values in the same order, so an item gets the same float32 score on every path.
    """
    num_queries, num_codebooks, codebook_size = tables.shape
    # Offset of each query's sub-space row in the flattened (Q, M, K) tables: (Q, 1, M).
    rows = np.arange(num_queries * num_codebooks, dtype=np.intp) * codebook_size
    flat_index = codes[candidates] + rows.reshape(num_queries, 1, num_codebooks)
    scores: FloatArray = np.take(tables, flat_index).sum(axis=2, dtype=np.float32)
    return scores


def decode(codes: CodeArray, codebooks: FloatArray) -> FloatArray:
    """(N, M*d) concatenated codewords selected by each code."""
    num_codebooks = codebooks.shape[0]
    selected = codebooks[np.arange(num_codebooks)[None, :], codes.astype(np.intp)]
    return np.ascontiguousarray(selected.reshape(codes.shape[0], -1), dtype=np.float32)


def pack_codes(codes: CodeArray, codebook_size: int) -> CodeArray:
    """(N, M) codes -> (N, code_size) bytes in FAISS's layout (little-endian bit stream)."""
    nbits = bits_per_code(codebook_size)
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    if nbits == 4:
        # Two codes per byte, low nibble first: 10x less CPU than the bit-array route below.
        small = codes.astype(np.uint8, copy=False)
        if small.shape[1] % 2:
            small = np.pad(small, ((0, 0), (0, 1)))
        return np.ascontiguousarray(small[:, 0::2] | (small[:, 1::2] << 4))
    shifts = np.arange(nbits, dtype=np.uint8)
    bits = (codes[:, :, None] >> shifts) & 1
    packed = np.packbits(
        bits.reshape(codes.shape[0], codes.shape[1] * nbits), axis=1, bitorder="little"
    )
    return np.ascontiguousarray(packed, dtype=np.uint8)


def unpack_codes(packed: CodeArray, num_codebooks: int, codebook_size: int) -> CodeArray:
    """Inverse of `pack_codes`."""
    nbits = bits_per_code(codebook_size)
    if nbits == 8:
        return np.ascontiguousarray(packed[:, :num_codebooks], dtype=np.uint8)
    if nbits == 4:
        # Two codes per byte, low nibble first: split without the 8x bit-array detour.
        nibbles = np.empty((packed.shape[0], 2 * packed.shape[1]), dtype=np.uint8)
        nibbles[:, 0::2] = packed & 0x0F
        nibbles[:, 1::2] = packed >> 4
        return np.ascontiguousarray(nibbles[:, :num_codebooks])
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_codebooks * nbits]
    weights = (1 << np.arange(nbits, dtype=np.uint16)).astype(np.uint16)
    codes = (bits.reshape(packed.shape[0], num_codebooks, nbits) * weights).sum(axis=2)
    unpacked: CodeArray = codes.astype(np.uint8)
    return unpacked


def flat_pq_index(codebooks: FloatArray, packed: CodeArray | None = None) -> faiss.IndexPQ:
    """An inner-product `IndexPQ` holding the model's codewords (never trained) and given codes."""
    num_codebooks, codebook_size, codeword_dim = codebooks.shape
    index = faiss.IndexPQ(
        num_codebooks * codeword_dim,
        num_codebooks,
        bits_per_code(codebook_size),
        faiss.METRIC_INNER_PRODUCT,
    )
    faiss.copy_array_to_vector(codebooks.ravel(), index.pq.centroids)
    index.is_trained = True
    if packed is not None and len(packed):
        index.add_sa_codes(np.ascontiguousarray(packed))
    return index


def scan_index(codebooks: FloatArray, packed: CodeArray) -> faiss.Index:
    """The index searched at query time: FastScan where K=16 allows it, else the flat `IndexPQ`.

    FastScan keeps the same 4-bit codes in SIMD-friendly blocks and scores with lookup tables
    quantised to 8 bits, several times faster but approximate: callers re-rank its shortlist
    with exact ADC (see `CodeTable.search`).
    """
    flat = flat_pq_index(codebooks, packed)
    if codebooks.shape[1] == 16:
        # The SWIG stubs only declare the (d, M, nbits) constructor, not this conversion.
        return faiss.IndexPQFastScan(flat)  # type: ignore[arg-type]
    return flat


def codebooks_of(index: faiss.IndexPQ) -> FloatArray:
    """The (M, K, d) centroids an `IndexPQ` scores with."""
    pq = index.pq
    centroids = faiss.vector_to_array(pq.centroids).astype(np.float32)
    return centroids.reshape(pq.M, pq.ksub, pq.dsub)


def packed_codes_of(index: faiss.IndexPQ) -> CodeArray:
    """(N, code_size) packed codes held by a flat `IndexPQ`."""
    flat = faiss.vector_to_array(index.codes).astype(np.uint8, copy=False)
    return flat.reshape(index.ntotal, index.code_size)
