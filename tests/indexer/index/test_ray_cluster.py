"""The Ray pieces the encoder and the Ray service share: joining a cluster, the model actor."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.index.ray_cluster import EmbeddingActor, RayClusterError, connect
from model import Embedder, ModelCard, build_model, save_checkpoint


def test_an_unreachable_cluster_address_fails_fast_naming_it():
    pytest.importorskip("ray", reason="ray is not installed: install the `ray` extra")
    with pytest.raises(RayClusterError, match=r"no Ray cluster answers at 127\.0\.0\.1:9"):
        connect("127.0.0.1:9")
    with pytest.raises(RayClusterError, match="not a Ray cluster address"):
        connect("somewhere")


def test_the_model_actor_embeds_images_and_rows_as_the_embedder_does(tmp_path):
    """Called outside Ray (the class is a plain class until Ray wraps it): the serving call
    and the Ray Data call give the `Embedder`'s descriptors, and empty rows get zeros."""
    torch.manual_seed(0)
    model = build_model(ModelCard(input_size=32)).eval()
    save_checkpoint(model, tmp_path / "model.pt")
    actor = EmbeddingActor(str(tmp_path / "model.pt"), "cpu", threads=1)
    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "navy")]
    expected = Embedder(model, torch.device("cpu")).embed(images)
    np.testing.assert_allclose(actor.embed(images), expected, atol=1e-6)
    pixels = np.empty(3, dtype=object)
    pixels[:] = [pickle.dumps(images[0]), b"", pickle.dumps(images[1])]
    out = actor({"pixels": pixels, "position": np.arange(3)})
    assert "pixels" not in out and out["position"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(out["descriptor"][[0, 2]], expected, atol=1e-6)
    assert not out["descriptor"][1].any()
