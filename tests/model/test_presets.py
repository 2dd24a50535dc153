"""Every foundation-model preset builds in timm as its publisher describes it.

The giants (ViT-L to ViT-g) are built on torch's meta device, which has shapes but no storage:
their published parameter counts and embedding sizes are checked without materialising them.
"""

from typing import Any

import pytest
import torch

from model import ModelCard
from model.presets import PRESETS
from model.timm_backbones import build_timm_trunk

# The small presets are also built for real and run on a real 224 px batch.
# H0-mini (86M parameters) takes about a minute on two loaded cores.
SMALL_PRESETS = ["kaiko-vits16", "lunit-vits16", pytest.param("h0-mini", marks=pytest.mark.slow)]


def published_parameter_count(text: str) -> float:
    scale = {"M": 1e6, "B": 1e9}[text[-1]]
    return float(text[:-1]) * scale


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_its_published_size_and_embedding(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        trunk = build_timm_trunk(name)
        embedding = trunk.embedding(torch.zeros(2, 3, preset.input_size, preset.input_size))
    parameters = sum(parameter.numel() for parameter in trunk.parameters())
    # The publishers round their counts ("1.1B", "304M"): within 5% of the network built here.
    assert parameters == pytest.approx(published_parameter_count(preset.parameters), rel=0.05)
    assert embedding.shape == (2, preset.embedding_dim)
    assert trunk.embedding_dim == preset.embedding_dim


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_presets_run_with_random_weights_at_their_input_size(name):
    torch.manual_seed(0)
    trunk = build_timm_trunk(name).eval()
    preset = PRESETS[name]
    images = torch.randn(2, 3, preset.input_size, preset.input_size)
    network: Any = trunk.network
    with torch.inference_mode():
        tokens = network.forward_features(images)
        features = trunk(images)
        embedding = trunk.embedding(images)
    grid = preset.input_size // network.patch_embed.patch_size[0]
    assert embedding.shape == (2, preset.embedding_dim)
    assert torch.isfinite(embedding).all()
    # Registers are prefix tokens: neither the class token nor part of the patch grid.
    prefix = trunk.network.num_prefix_tokens
    assert features.patch_grid.shape == (2, trunk.width, grid, grid)
    assert torch.equal(features.class_token, tokens[:, 0])
    assert torch.equal(features.patch_grid.flatten(2).transpose(1, 2), tokens[:, prefix:])


def test_registers_are_dropped_from_the_patch_grid_of_register_models():
    with torch.device("meta"):
        h0_mini = build_timm_trunk("h0-mini")
        uni2 = build_timm_trunk("uni2-h")
    assert h0_mini.network.num_prefix_tokens == 5  # class token + 4 registers
    assert uni2.network.num_prefix_tokens == 9  # class token + 8 registers


def test_virchow2_reads_out_class_token_and_mean_patch_token():
    torch.manual_seed(0)
    with torch.device("meta"):
        trunk = build_timm_trunk("virchow2")
    assert trunk.readout == "class_token+mean_patch"
    assert trunk.embedding_dim == 2 * trunk.width == 2560


def test_a_preset_card_takes_the_backbones_own_preprocessing():
    card = ModelCard(backbone="h-optimus-0")
    preset = PRESETS["h-optimus-0"]
    assert (card.input_size, card.mean, card.std) == (224, preset.mean, preset.std)
    assert card.stages == [4]
    assert ModelCard(backbone="kaiko-vits16").mean == (0.5, 0.5, 0.5)


def test_a_fixed_size_preset_refuses_another_input_size():
    with pytest.raises(ValueError, match="224 px input only"):
        ModelCard(backbone="h-optimus-0", input_size=64)
    # UNI is published with dynamic_img_size=True: smaller tiles are allowed.
    assert ModelCard(backbone="uni", input_size=112).input_size == 112


def test_timm_backbones_refuse_resnet_stages():
    with pytest.raises(ValueError, match="stages must be"):
        ModelCard(backbone="uni", stages=[2, 3])
