import math

import pytest
import torch

from model.quantizer import ProductQuantizer, adc_scores, codeword_usage, split_subvectors


@pytest.fixture
def quantizer() -> ProductQuantizer:
    torch.manual_seed(0)
    return ProductQuantizer(num_codebooks=4, codebook_size=8, codeword_dim=6, scale=5.0)


@pytest.mark.parametrize(("m", "k", "bits"), [(8, 16, 32), (4, 256, 32), (16, 4, 32), (3, 2, 3)])
def test_bits_are_m_times_log2_k(m: int, k: int, bits: int) -> None:
    assert ProductQuantizer(m, k, 2, 1.0).bits == bits == m * math.log2(k)


def test_codewords_have_unit_length(quantizer: ProductQuantizer) -> None:
    books = quantizer.codebooks()
    assert books.shape == (4, 8, 6)
    assert books.dtype == torch.float32
    torch.testing.assert_close(books.norm(dim=-1), torch.ones(4, 8))


def test_hard_codes_are_int64_in_range(quantizer: ProductQuantizer) -> None:
    codes = quantizer.assign(torch.randn(50, 24))
    assert codes.shape == (50, 4)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 8


def test_decoding_codes_gives_the_selected_codewords(quantizer: ProductQuantizer) -> None:
    codes = torch.tensor([[0, 7, 3, 1], [5, 5, 5, 5]])
    decoded = quantizer.decode(codes).reshape(2, 4, 6)
    books = quantizer.codebooks()
    for row in range(2):
        for m in range(4):
            torch.testing.assert_close(decoded[row, m], books[m, codes[row, m]])


def test_a_codeword_is_coded_as_itself(quantizer: ProductQuantizer) -> None:
    codes = torch.tensor([[2, 6, 0, 4]])
    assert torch.equal(quantizer.assign(quantizer.decode(codes)), codes)


def test_soft_quantisation_tends_to_hard_as_scale_grows(quantizer: ProductQuantizer) -> None:
    descriptors = torch.randn(20, 24)
    with torch.no_grad():
        hard = quantizer.decode(quantizer.assign(descriptors))
    errors = []
    for scale in (1.0, 10.0, 100.0, 10_000.0):
        quantizer.scale = scale
        with torch.no_grad():
            errors.append(float((quantizer.soft_quantize(descriptors) - hard).abs().max()))
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 0.1
    assert errors[-1] < 1e-4


def test_soft_assignment_is_a_distribution(quantizer: ProductQuantizer) -> None:
    weights = quantizer.soft_assignment(torch.randn(10, 24))
    torch.testing.assert_close(weights.sum(-1), torch.ones(10, 4))


def test_adc_equals_sum_of_subspace_cosines_with_decoded_codes(
    quantizer: ProductQuantizer,
) -> None:
    queries = torch.randn(5, 24)
    codes = quantizer.assign(torch.randn(30, 24))
    expected = split_subvectors(queries, 4).reshape(5, -1) @ quantizer.decode(codes).T
    torch.testing.assert_close(adc_scores(queries, codes, quantizer.codebooks()), expected)


def test_descriptor_dim_must_split_into_m_parts() -> None:
    with pytest.raises(ValueError, match="multiple"):
        split_subvectors(torch.randn(2, 10), 4)


def test_codeword_usage_detects_collapse() -> None:
    collapsed = torch.zeros(100, 2, dtype=torch.long)
    even = torch.arange(16).repeat(8).reshape(-1, 1).repeat(1, 2)
    assert codeword_usage(collapsed, 16) == {
        "codewords_used": 1.0,
        "perplexity": pytest.approx(1.0),
        "codebook_size": 16.0,
    }
    assert codeword_usage(even, 16)["perplexity"] == pytest.approx(16.0)


def test_unused_codewords_are_moved_onto_the_data(quantizer: ProductQuantizer) -> None:
    descriptors = torch.randn(40, 24)
    used = torch.zeros(4, 8, dtype=torch.bool)
    used[:, :2] = True
    before = quantizer.codebooks().clone()
    assert quantizer.reset_unused(descriptors, used) == 4 * 6
    after = quantizer.codebooks()
    torch.testing.assert_close(after[:, :2], before[:, :2])
    subvectors = split_subvectors(descriptors, 4)  # (40, 4, 6)
    for m in range(4):
        nearest = (after[m, 2:] @ subvectors[:, m].T).amax(dim=1)
        torch.testing.assert_close(nearest, torch.ones(6))


def test_refitting_finds_well_separated_clusters_and_lowers_the_quantisation_error() -> None:
    torch.manual_seed(0)
    quantizer = ProductQuantizer(num_codebooks=2, codebook_size=4, codeword_dim=8, scale=5.0)
    centres = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    picks = torch.randint(4, (400, 2))
    noisy = centres[torch.arange(2), picks] + 0.05 * torch.randn(400, 2, 8)
    descriptors = torch.nn.functional.normalize(noisy, dim=-1).reshape(400, 16)

    @torch.no_grad()
    def mean_cosine_to_codeword() -> float:
        decoded = quantizer.decode(quantizer.assign(descriptors)).view(400, 2, 8)
        return float((decoded * descriptors.view(400, 2, 8)).sum(-1).mean())

    before = mean_cosine_to_codeword()
    quantizer.fit_codewords(descriptors, iterations=30)
    after = mean_cosine_to_codeword()
    assert after > before and after > 0.99
    # Each true centre has a refitted codeword within a small angle (brute force over pairs).
    for subspace in range(2):
        cosines = centres[subspace] @ quantizer.codebooks()[subspace].detach().T
        assert bool((cosines.max(dim=1).values > 0.99).all())
