"""FAISS through the archive index ranks and scores real tiles exactly as the model's own ADC.

At every supported code length: 32, 64 and 128 bits with K=16 (4-bit codes, FastScan scan and
exact re-rank) and with K=256 (8-bit codes, flat IndexPQ).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.index.store import ArchiveIndex, NewItem
from model import ModelCard, build_model
from model.preprocess import preprocess
from model.quantizer import adc_scores
from tests.indexer.index_helpers import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


# (M, K, d): bits = M * log2(K).
GEOMETRIES = {
    "32 bits K=16": (8, 16, 16),
    "64 bits K=16": (16, 16, 8),
    "128 bits K=16": (32, 16, 8),
    "32 bits K=256": (4, 256, 16),
    "64 bits K=256": (8, 256, 16),
    "128 bits K=256": (16, 256, 8),
}


@pytest.fixture(scope="module", params=list(GEOMETRIES), ids=list(GEOMETRIES))
def encoded_tiles(request):
    if not KATHER.is_dir():
        pytest.skip(f"{KATHER} is missing")
    num_codebooks, codebook_size, codeword_dim = GEOMETRIES[request.param]
    torch.manual_seed(3)
    card = ModelCard(
        input_size=32,
        num_codebooks=num_codebooks,
        codebook_size=codebook_size,
        codeword_dim=codeword_dim,
    )
    assert card.bits == int(request.param.split()[0])
    model = build_model(card).eval()
    paths = sorted(KATHER.rglob("*.tif"))[::2]
    images = [Image.open(path).convert("RGB") for path in paths]
    with torch.inference_mode():
        descriptors = model.encode(preprocess(images, model.card))
        codes = model.codes_from_descriptors(descriptors)
    return model, paths, descriptors, codes


def test_index_codes_and_scores_equal_the_models_adc(tmp_path, encoded_tiles):
    model, paths, descriptors, model_codes = encoded_tiles
    codebooks = model.codebooks().detach()
    index = ArchiveIndex.create_from_codebooks(
        tmp_path / "index", codebooks.numpy(), card=model.card.model_dump(mode="json")
    )
    records = [NewItem(source=str(path), content_hash=str(path)) for path in paths]
    outcomes = index.add(descriptors.numpy(), records)
    ids = np.array([outcome.id for outcome in outcomes])
    stored = index._table.live_arrays()[1]
    assert np.array_equal(stored, model_codes.numpy())

    queries = descriptors[::12]
    reference = adc_scores(queries, model_codes, codebooks).numpy()  # (Q, N) by position
    results = index.search(queries.numpy(), len(paths))
    for query_row, hits in zip(reference, results, strict=True):
        positions = np.searchsorted(ids, [hit.id for hit in hits])
        assert len(set(positions)) == len(paths)
        # Every hit carries the model's score for that item, and the order is the model's order.
        assert np.allclose([hit.score for hit in hits], query_row[positions], atol=1e-4)
        assert np.allclose(query_row[positions], np.sort(query_row)[::-1], atol=1e-4)
    index.close()


def test_top_hits_are_the_models_top_hits(tmp_path, encoded_tiles):
    model, paths, descriptors, model_codes = encoded_tiles
    codebooks = model.codebooks().detach()
    index = ArchiveIndex.create_from_codebooks(
        tmp_path / "index", codebooks.numpy(), card=model.card.model_dump(mode="json")
    )
    index.add(descriptors.numpy(), [NewItem(source=str(p), content_hash=str(p)) for p in paths])
    queries = descriptors[1::10]
    reference = adc_scores(queries, model_codes, codebooks).numpy()
    for query_row, hits in zip(reference, index.search(queries.numpy(), 10), strict=True):
        assert np.allclose([hit.score for hit in hits], np.sort(query_row)[::-1][:10], atol=1e-4)
    index.close()
