"""`histosearch train` on a foundation-model preset with its weights file and a frozen backbone."""

from pathlib import Path

import torch

from indexer.cli import main
from model import load_checkpoint
from model.timm_backbones import build_timm_trunk
from tests.indexer.learn.test_training import _write_tiny_dataset


def test_a_frozen_preset_backbone_leaves_training_as_its_weights_file_gave_it(tmp_path: Path):
    torch.manual_seed(5)
    published = build_timm_trunk("kaiko-vits16").network.state_dict()
    weights = tmp_path / "vits16.pth"
    torch.save(published, weights)
    data = _write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    arguments = [
        *("train", "--data", str(data), "--out", str(run), "--epochs", "1"),
        *("--validation-groups", "g4", "--test-groups", "g3", "g5"),
        *("--backbone", "kaiko-vits16", "--backbone-weights", str(weights), "--freeze-backbone"),
        # ViT-S/16 is published with a dynamic input size: 32 px tiles are a 2x2 patch grid.
        *("--input-size", "32", "--preload-size", "40", "--batch-size", "8", "--threads", "1"),
    ]
    assert main(arguments) == 0
    model = load_checkpoint(run / "model.pt")
    assert model.card.freeze_backbone and model.card.backbone == "kaiko-vits16"
    assert model.card.mean == (0.5, 0.5, 0.5) and model.card.embedding_dim == 384
    assert model.card.backbone_weights == "file:vits16.pth"
    trained = model.trunk.network.state_dict()  # type: ignore[union-attr]
    assert all(torch.equal(trained[key], value) for key, value in published.items())
