"""Published weight files load into the timm backbones exactly; wrong ones are refused by name."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from model import ModelCard, build_model
from model.timm_backbones import (
    HubUnavailableError,
    TimmTrunk,
    build_timm_trunk,
    dinov2_transformers_to_timm,
    load_timm_weights,
)
from model.weights import BackboneWeightsError, load_strictly

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kaiko_network():
    """A ViT-S/16 with random weights, in the layout Kaiko's torch.hub release loads."""
    torch.manual_seed(1)
    return build_timm_trunk("kaiko-vits16").eval()


def saved(directory: Path, name: str, state: dict[str, torch.Tensor], wrapper: str | None) -> Path:
    path = directory / name
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save({wrapper: state} if wrapper else state, path)
    return path


@pytest.mark.parametrize(
    ("file_name", "wrapper"),
    [
        ("pytorch_model.bin", None),
        ("model.safetensors", None),
        ("checkpoint.pth", "state_dict"),
        ("teacher.pth", "model"),
    ],
)
def test_a_weights_file_reproduces_the_network_it_was_saved_from(
    tmp_path, kaiko_network, file_name, wrapper
):
    path = saved(tmp_path, file_name, kaiko_network.network.state_dict(), wrapper)
    torch.manual_seed(2)  # the model below starts from other random weights
    model = build_model(ModelCard(backbone="kaiko-vits16"), backbone_weights=path).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert isinstance(model.trunk, TimmTrunk)
        assert torch.equal(model.trunk.embedding(images), kaiko_network.embedding(images))
    assert model.card.backbone_weights == f"file:{file_name}"
    assert model.card.backbone_weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.card.embedding_dim == 384


def test_lunits_file_layout_loads_into_its_preset(tmp_path, kaiko_network):
    # Lunit's checkpoint is the state dict of timm's VisionTransformer(embed 384, 6 heads, /16).
    state = kaiko_network.network.state_dict()
    path = saved(tmp_path, "dino_vit_small_patch16_ep200.torch", state, None)
    trunk = build_timm_trunk("lunit-vits16").eval()
    load_timm_weights(trunk, "lunit-vits16", path)
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(trunk.embedding(images), kaiko_network.embedding(images))


def test_a_file_for_another_architecture_is_refused_with_its_keys_named(tmp_path, kaiko_network):
    path = saved(tmp_path, "vits16.bin", kaiko_network.network.state_dict(), None)
    # H0-mini has registers and a SwiGLU MLP: the ViT-S file lacks the one, misfits the other.
    trunk = build_timm_trunk("h0-mini")
    with pytest.raises(BackboneWeightsError) as refused:
        load_timm_weights(trunk, "h0-mini", path)
    message = str(refused.value)
    assert "missing keys" in message and "reg_token" in message
    assert "wrong shapes" in message and "patch_embed.proj.weight (384, 3, 16, 16)" in message


def test_a_resnet_file_given_to_a_vit_names_the_unexpected_keys(tmp_path):
    from torchvision.models import resnet18

    path = saved(tmp_path, "resnet18.pth", resnet18(weights=None).state_dict(), None)
    with pytest.raises(BackboneWeightsError, match=r"unexpected keys \['bn1.bias'"):
        load_timm_weights(build_timm_trunk("kaiko-vits16"), "kaiko-vits16", path)


def test_a_file_that_is_not_weights_is_refused(tmp_path):
    path = tmp_path / "notes.bin"
    path.write_bytes(b"not a tensor file")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        load_timm_weights(build_timm_trunk("kaiko-vits16"), "kaiko-vits16", path)


def test_transformers_dinov2_weights_map_onto_the_timm_vit_exactly():
    """Phikon-v2 ships a transformers Dinov2Model; the same network built by timm must give the
    same tokens once the keys are mapped (a small Dinov2 here, the mapping is per block)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.Dinov2Config(
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=6,
        patch_size=16,
        image_size=224,
        layerscale_value=1e-5,
    )
    reference = transformers.Dinov2Model(config).eval()
    # Layer scale is initialised to a constant: randomise it so that a swapped ls1/ls2 shows.
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "lambda1" in name:
                parameter.uniform_(0.5, 1.5)
    import timm

    network: Any = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, depth=3
    ).eval()
    load_strictly(network, dinov2_transformers_to_timm(reference.state_dict()), "dinov2", set())
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = reference(pixel_values=images).last_hidden_state
        tokens = network.forward_features(images)
    assert torch.allclose(tokens, expected, atol=1e-5)


def test_transformers_4_key_names_of_the_published_file_are_read():
    torch.manual_seed(4)
    import timm

    network = timm.create_model("vit_small_patch16_224", num_classes=0, init_values=1e-5)
    timm_state = network.state_dict()
    published: dict[str, torch.Tensor] = {
        "embeddings.cls_token": timm_state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, 384),
        "embeddings.position_embeddings": timm_state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
        "layernorm.weight": timm_state["norm.weight"],
        "layernorm.bias": timm_state["norm.bias"],
    }
    for layer in range(12):
        source, target = f"encoder.layer.{layer}.", f"blocks.{layer}."
        for kind in ("weight", "bias"):
            query, key, value = timm_state[f"{target}attn.qkv.{kind}"].chunk(3)
            published[f"{source}attention.attention.query.{kind}"] = query
            published[f"{source}attention.attention.key.{kind}"] = key
            published[f"{source}attention.attention.value.{kind}"] = value
            published[f"{source}attention.output.dense.{kind}"] = timm_state[
                f"{target}attn.proj.{kind}"
            ]
            for same in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                published[f"{source}{same}.{kind}"] = timm_state[f"{target}{same}.{kind}"]
        published[f"{source}layer_scale1.lambda1"] = timm_state[f"{target}ls1.gamma"]
        published[f"{source}layer_scale2.lambda1"] = timm_state[f"{target}ls2.gamma"]
    mapped = dinov2_transformers_to_timm(published)
    assert set(mapped) == set(timm_state)
    assert all(torch.equal(mapped[key], timm_state[key]) for key in timm_state)


def test_phikon_v2s_preset_accepts_exactly_the_keys_of_a_transformers_vit_l():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=16,
        image_size=224,
        layerscale_value=1e-5,
    )
    with torch.device("meta"):
        published = transformers.Dinov2Model(config).state_dict()
        trunk = build_timm_trunk("phikon-v2")
    mapped = dinov2_transformers_to_timm(published)
    expected = trunk.network.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[key].shape == expected[key].shape for key in expected)


@pytest.mark.slow
def test_an_unreachable_hub_is_explained_with_how_to_pass_a_downloaded_file(tmp_path):
    """timm's hub loader under the hub's offline variables (no network is touched)."""
    script = (
        "from model import ModelCard, build_model\n"
        "from model.timm_backbones import HubUnavailableError\n"
        "try:\n"
        "    build_model(ModelCard(backbone='h0-mini'), backbone_weights='hub')\n"
        "except HubUnavailableError as error:\n"
        "    print(error)\n"
    )
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPOSITORY),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    message = result.stdout
    assert "cannot load the h0-mini weights from hf-hub:bioptimus/H0-mini" in message
    assert "offline mode is set" in message
    assert "--backbone-weights FILE" in message and "model.safetensors" in message


def test_a_gated_repository_is_explained_as_refused_access():
    from huggingface_hub.errors import GatedRepoError

    from model.timm_backbones import hub_failure_message

    # What huggingface_hub raises on a 403 for a gated repository the account was not granted;
    # built without the HTTP response its constructor wants (that client differs by version).
    refusal = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(refusal, "403 Client Error: access to model MahmoodLab/UNI is restricted")
    message = hub_failure_message("uni", "hf-hub:MahmoodLab/UNI", refusal)
    assert "access to the gated repository MahmoodLab/UNI was refused" in message
    assert "pytorch_model.bin" in message and "--backbone-weights FILE" in message


def test_a_preset_without_a_timm_hub_loader_says_to_pass_the_file():
    with pytest.raises(HubUnavailableError, match="kaiko-vits16 has no timm hub loader"):
        load_timm_weights(build_timm_trunk("kaiko-vits16"), "kaiko-vits16", "hub")
