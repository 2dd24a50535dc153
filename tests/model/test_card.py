"""Code lengths the card offers, and how many sub-spaces each takes."""

import pytest

from model import ModelCard
from model.card import code_geometry


@pytest.mark.parametrize(
    ("bits", "codebook_size", "num_codebooks"),
    [(32, 16, 8), (64, 16, 16), (128, 16, 32), (32, 256, 4), (64, 256, 8), (128, 256, 16)],
)
def test_each_code_length_has_m_sub_spaces_of_log2_k_bits(bits, codebook_size, num_codebooks):
    assert code_geometry(bits, codebook_size) == num_codebooks
    card = ModelCard(num_codebooks=num_codebooks, codebook_size=codebook_size)
    assert card.bits == bits and card.code_bytes == bits // 8


def test_other_code_lengths_are_refused():
    with pytest.raises(ValueError, match="supported codes"):
        code_geometry(48)
    with pytest.raises(ValueError, match="supported codes"):
        code_geometry(64, codebook_size=64)
