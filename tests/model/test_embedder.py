"""`Embedder` against the model's own `encode` on the same preprocessed batch."""

import numpy as np
import pytest
import torch
from PIL import Image

from model import Embedder, ModelCard, SPQModel, build_model, normalize
from model.preprocess import open_upright_rgb, preprocess
from support.data import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> SPQModel:
    torch.manual_seed(0)
    return build_model(ModelCard(input_size=32)).eval()


@pytest.fixture(scope="module")
def tiles() -> list[Image.Image]:
    paths = sorted(KATHER.rglob("*.tif"))[::24]
    if len(paths) < 9:
        pytest.skip("Kather 2016 tiles are missing")
    return [open_upright_rgb(path) for path in paths]


def reference(model: SPQModel, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval().encode(batch).numpy()


def test_descriptors_are_the_models_encode_of_the_preprocessed_batch(model, tiles):
    descriptors = Embedder(model, CPU).embed(tiles)
    expected = reference(model, preprocess(tiles, model.card))
    assert descriptors.dtype == np.float32 and descriptors.shape == (len(tiles), 128)
    np.testing.assert_allclose(descriptors, expected, atol=1e-5)
    sub_norms = np.linalg.norm(descriptors.reshape(len(tiles), 8, 16), axis=2)
    np.testing.assert_allclose(sub_norms, 1.0, atol=1e-5)


def test_tensors_at_input_size_are_normalised_then_encoded(model):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    descriptors = Embedder(model, CPU).embed_tensors(images)
    np.testing.assert_allclose(
        descriptors, reference(model, normalize(images, model.card)), atol=1e-5
    )


def test_batch_size_does_not_change_the_descriptors(model, tiles):
    one_by_one = Embedder(model, CPU, batch_size=1).embed(tiles)
    for batch_size in (4, 64):
        np.testing.assert_allclose(
            Embedder(model, CPU, batch_size=batch_size).embed(tiles), one_by_one, atol=1e-5
        )


def test_no_images_give_an_empty_descriptor_array(model):
    embedder = Embedder(model, CPU)
    for empty in (embedder.embed([]), embedder.embed_tensors(torch.empty(0, 3, 32, 32))):
        assert empty.shape == (0, 128) and empty.dtype == np.float32


def test_a_training_model_is_embedded_in_eval_mode_and_given_back_training(model, tiles):
    expected = reference(model, preprocess(tiles[:3], model.card))
    model.train()
    try:
        descriptors = Embedder(model, CPU).embed(tiles[:3])
        assert model.training
        assert all(module.training for module in model.modules())
    finally:
        model.eval()
    # Batch norm used its running statistics (eval), not the batch's (train).
    np.testing.assert_allclose(descriptors, expected, atol=1e-5)


def test_a_batch_size_below_one_is_refused(model):
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(model, CPU, batch_size=0)
