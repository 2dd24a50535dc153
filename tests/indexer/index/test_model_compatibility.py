"""An index refuses a model whose backbone started from other weights than its codes' model."""

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from indexer.index.store import ArchiveIndex
from model import CheckpointMismatchError, ModelCard, build_model, load_checkpoint, save_checkpoint

CARD = ModelCard(backbone="resnet18", stages=[4], input_size=32, num_codebooks=4, codeword_dim=8)


def checkpoint_from_weights(directory: Path, seed: int) -> Path:
    """A checkpoint whose backbone was initialised from a weights file of random ResNet-18."""
    torch.manual_seed(seed)
    weights = directory / f"resnet18-{seed}.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    torch.manual_seed(0)  # the same head, so only the backbone's starting weights differ
    model = build_model(CARD, backbone_weights=weights)
    checkpoint = directory / f"model-{seed}.pt"
    save_checkpoint(model, checkpoint)
    return checkpoint


def test_a_model_from_other_backbone_weights_is_refused_by_the_indexs_card(tmp_path):
    indexed, other = checkpoint_from_weights(tmp_path, 1), checkpoint_from_weights(tmp_path, 2)
    index = ArchiveIndex.create(tmp_path / "index", indexed)
    try:
        # The check the service makes when it pairs an index with its model.
        expected = ModelCard.model_validate(index.card)
        assert expected.backbone_weights == "file:resnet18-1.pth"
        assert len(expected.backbone_weights_sha256) == 64
        load_checkpoint(indexed, expected_card=expected)
        with pytest.raises(CheckpointMismatchError, match="backbone_weights_sha256"):
            load_checkpoint(other, expected_card=expected)
    finally:
        index.close()
