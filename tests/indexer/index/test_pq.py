import numpy as np
import pytest

from indexer.index.pq import (
    adc_scores,
    assign_codes,
    bits_per_code,
    check_codebooks,
    flat_pq_index,
    lookup_tables,
    normalise_subvectors,
    pack_codes,
    unpack_codes,
)
from tests.indexer.index_helpers import M, descriptors_near_codewords, unit_codebooks


@pytest.mark.parametrize("codebook_size", [4, 16, 256])
def test_packed_codes_match_faiss_encoding(codebook_size):
    codebooks = unit_codebooks(codebook_size=codebook_size)
    vectors = descriptors_near_codewords(200, codebooks)
    codes = assign_codes(vectors, codebooks)
    faiss_packed = flat_pq_index(codebooks).sa_encode(normalise_subvectors(vectors, M))
    assert np.array_equal(pack_codes(codes, codebook_size), faiss_packed)
    assert np.array_equal(unpack_codes(faiss_packed, M, codebook_size), codes)


def test_adc_scores_equal_the_dot_product_with_decoded_codewords():
    codebooks = unit_codebooks()
    database = descriptors_near_codewords(50, codebooks)
    codes = assign_codes(database, codebooks)
    queries = descriptors_near_codewords(5, codebooks, seed=9)
    decoded = codebooks[np.arange(M)[None, :], codes].reshape(50, -1)
    expected = normalise_subvectors(queries, M) @ decoded.T
    assert np.allclose(adc_scores(lookup_tables(queries, codebooks), codes), expected, atol=1e-5)


def test_codes_are_the_most_similar_codeword_per_subspace():
    codebooks = unit_codebooks()
    vectors = descriptors_near_codewords(30, codebooks)
    codes = assign_codes(vectors, codebooks)
    sub_dim = codebooks.shape[2]
    for vector, code in zip(vectors, codes, strict=True):
        for m in range(M):
            part = vector[m * sub_dim : (m + 1) * sub_dim]
            similarities = [float(np.dot(part, codeword)) for codeword in codebooks[m]]
            assert code[m] == max(range(len(similarities)), key=similarities.__getitem__)


def test_codebooks_must_be_unit_length_and_power_of_two_sized():
    with pytest.raises(ValueError, match="unit length"):
        check_codebooks(2 * unit_codebooks())
    with pytest.raises(ValueError, match="power of two"):
        bits_per_code(12)


@pytest.mark.parametrize(
    ("num_codebooks", "codebook_size"),
    [(16, 16), (32, 16), (8, 256), (16, 256)],
    ids=["64 bits K=16", "128 bits K=16", "64 bits K=256", "128 bits K=256"],
)
def test_longer_codes_pack_as_faiss_encodes_them_and_score_as_decoded_codewords(
    num_codebooks, codebook_size
):
    rng = np.random.default_rng(num_codebooks + codebook_size)
    raw = rng.standard_normal((num_codebooks, codebook_size, 8)).astype(np.float32)
    codebooks = raw / np.linalg.norm(raw, axis=2, keepdims=True)
    vectors = rng.standard_normal((300, num_codebooks * 8)).astype(np.float32)
    codes = assign_codes(vectors, codebooks)
    index = flat_pq_index(codebooks)
    faiss_packed = index.sa_encode(normalise_subvectors(vectors, num_codebooks))
    assert faiss_packed.shape[1] == num_codebooks * int(np.log2(codebook_size)) // 8
    assert np.array_equal(pack_codes(codes, codebook_size), faiss_packed)
    assert np.array_equal(unpack_codes(faiss_packed, num_codebooks, codebook_size), codes)
    # FAISS's own inner-product search over those codes scores what the model's ADC scores.
    index.add_sa_codes(faiss_packed)
    queries = normalise_subvectors(rng.standard_normal((4, num_codebooks * 8)), num_codebooks)
    faiss_scores, faiss_ids = index.search(queries, 300)
    model_scores = adc_scores(lookup_tables(queries, codebooks), codes)
    assert np.allclose(np.take_along_axis(model_scores, faiss_ids, axis=1), faiss_scores, atol=1e-4)
