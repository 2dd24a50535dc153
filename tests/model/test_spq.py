"""The SPQ network on token backbones, and its training modes (frozen, last blocks only)."""

import pytest
import torch

from model import CrossQuantizedContrastiveLoss, ModelCard, SPQModel, build_model
from model.pooling import TokenDescriptor
from model.timm_backbones import TimmTrunk, TokenFeatures

# Kaiko's ViT-S/16 is published with dynamic_img_size=True: 32 px tiles give a 2x2 patch grid,
# cheap enough to train a few steps on a CPU.
VIT_CARD = ModelCard(backbone="kaiko-vits16", input_size=32, hidden_dim=64)
RESNET_CARD = ModelCard(backbone="resnet18", stages=[4], input_size=32, hidden_dim=64)


def train_a_few_steps(model: SPQModel, steps: int = 3) -> None:
    """What the trainer does: Adam over all parameters with weight decay, CQC loss."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    loss_function = CrossQuantizedContrastiveLoss(0.5)
    model.train()
    for _ in range(steps):
        images = torch.randn(4, 3, model.card.input_size, model.card.input_size)
        x_a, z_a = model(images)
        x_b, z_b = model(images + 0.1 * torch.randn_like(images))
        loss = loss_function(x_a, z_a, x_b, z_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    state = module.state_dict()
    return {key for key, value in state.items() if not torch.equal(value, before[key])}


def test_token_backbones_feed_class_token_and_pooled_patch_grid_to_the_head():
    torch.manual_seed(0)
    model = build_model(VIT_CARD).eval()
    assert isinstance(model.global_descriptor, TokenDescriptor)
    # One class-token branch plus SPoC, MAC and GeM over the patch grid.
    assert len(model.global_descriptor.grid_branches) == 3
    assert model.global_descriptor.output_dim == 4 * (64 // 4)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        features = model.trunk(images)
        descriptors = model.encode(images)
    assert isinstance(features, TokenFeatures) and features.patch_grid.shape == (3, 384, 2, 2)
    assert descriptors.shape == (3, VIT_CARD.descriptor_dim)
    norms = descriptors.reshape(3, VIT_CARD.num_codebooks, -1).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_the_combined_descriptor_follows_cgd_per_branch_normalisation():
    torch.manual_seed(0)
    descriptor = TokenDescriptor(8, ["spoc", "mac"], 4, has_class_token=True).eval()
    assert descriptor.class_token_projection is not None
    spoc, mac = (branch.projection for branch in descriptor.grid_branches)
    class_token, grid = torch.randn(2, 8), torch.randn(2, 8, 3, 3)
    # Reference written out: each branch projected and L2-normalised, then the whole.
    branches = [
        torch.nn.functional.normalize(descriptor.class_token_projection(class_token), dim=-1),
        torch.nn.functional.normalize(spoc(grid.mean(dim=(2, 3))), dim=-1),  # type: ignore[operator]
        torch.nn.functional.normalize(mac(grid.amax(dim=(2, 3))), dim=-1),  # type: ignore[operator]
    ]
    expected = torch.nn.functional.normalize(torch.cat(branches, dim=-1), dim=-1)
    assert torch.allclose(descriptor(class_token, grid), expected, atol=1e-6)


@pytest.mark.parametrize("card", [VIT_CARD, RESNET_CARD], ids=["vit", "resnet"])
def test_a_frozen_backbone_stays_unchanged_while_the_head_learns(card):
    torch.manual_seed(0)
    model = build_model(card.model_copy(update={"freeze_backbone": True}))
    backbone, head = snapshot(model.trunk), snapshot(model.projection)
    train_a_few_steps(model)
    # Every backbone tensor, BatchNorm running statistics included, is bit-for-bit the same.
    assert changed(backbone, model.trunk) == set()
    assert changed(head, model.projection) == set(head)
    assert not any(parameter.requires_grad for parameter in model.trunk.parameters())


def test_training_the_last_block_changes_only_that_block_and_the_final_norm():
    torch.manual_seed(0)
    model = build_model(VIT_CARD.model_copy(update={"train_last_blocks": 1}))
    before = snapshot(model.trunk)
    train_a_few_steps(model)
    moved = {key.split(".")[1] + "." + key.split(".")[2] for key in changed(before, model.trunk)}
    assert moved == {"blocks.11", "norm.weight", "norm.bias"}


def test_training_the_last_resnet_blocks_keeps_the_earlier_batchnorm_statistics():
    torch.manual_seed(0)
    model = build_model(RESNET_CARD.model_copy(update={"train_last_blocks": 2}))
    before = snapshot(model.trunk)
    train_a_few_steps(model)
    moved = changed(before, model.trunk)
    assert moved and all(key.startswith("stages.3.") for key in moved)  # layer4 has 2 blocks


def test_frozen_and_last_blocks_modes_cannot_be_combined_or_exceed_the_depth():
    with pytest.raises(ValueError, match="give one of them"):
        ModelCard(freeze_backbone=True, train_last_blocks=2)
    with pytest.raises(ValueError, match="has 12 blocks"):
        build_model(VIT_CARD.model_copy(update={"train_last_blocks": 13}))


def test_cards_written_before_timm_backbones_still_validate():
    old = ModelCard().model_dump(mode="json")
    for field in (
        "backbone_weights",
        "backbone_weights_sha256",
        "embedding_dim",
        "freeze_backbone",
        "train_last_blocks",
    ):
        old.pop(field)
    card = ModelCard.model_validate(old)
    assert card.backbone == "resnet18" and card.backbone_weights_sha256 == ""
    assert card.compatibility_key()["backbone_weights_sha256"] == ""


@pytest.mark.parametrize("backbone", ["timm:convnext_atto", "timm:resnet18"])
def test_timm_cnns_pool_their_last_feature_map_and_train_their_last_block(backbone):
    torch.manual_seed(0)
    card = ModelCard(backbone=backbone, input_size=64, hidden_dim=64, train_last_blocks=1)
    assert card.stages == [4] and card.mean == (0.485, 0.456, 0.406)
    model = build_model(card)
    assert not isinstance(model.global_descriptor, TokenDescriptor)
    with torch.inference_mode():
        assert model.eval().encode(torch.randn(2, 3, 64, 64)).shape == (2, card.descriptor_dim)
    trunk = model.trunk
    assert isinstance(trunk, TimmTrunk)
    last = trunk.blocks()[-1]
    trainable = {id(p) for p in model.trunk.parameters() if p.requires_grad}
    assert trainable and trainable <= {id(p) for p in last.parameters()} | {
        id(p) for norm in trunk.final_norms() for p in norm.parameters()
    }


def _standardizers(model: SPQModel) -> list[torch.nn.BatchNorm1d]:
    return [m for m in model.global_descriptor.modules() if isinstance(m, torch.nn.BatchNorm1d)]


@pytest.mark.parametrize("card", [VIT_CARD, RESNET_CARD], ids=["vit", "resnet"])
def test_a_frozen_backbone_head_standardises_pooled_features_and_a_learning_one_does_not(card):
    learning = build_model(card)
    assert _standardizers(learning) == []
    assert not any("running_mean" in key for key in learning.global_descriptor.state_dict())
    frozen = build_model(card.model_copy(update={"freeze_backbone": True}))
    # One per branch: (class token and) each pooling method.
    branches = len(card.pooling) + (1 if card.backbone == "kaiko-vits16" else 0)
    assert len(_standardizers(frozen)) == branches
    assert all(not norm.affine for norm in _standardizers(frozen))


def test_standardised_pooled_features_spread_descriptors_that_share_one_direction():
    # Pooled features with a large shared part, as a random trunk gives (cosines near 1).
    torch.manual_seed(0)
    shared = 10 * torch.rand(1, 8, 1, 1)
    grid = shared + 0.1 * torch.randn(64, 8, 3, 3)
    plain = TokenDescriptor(8, ["spoc"], 4, has_class_token=False)
    standardised = TokenDescriptor(8, ["spoc"], 4, has_class_token=False, standardize=True)
    standardised.load_state_dict(plain.state_dict(), strict=False)  # the same projection

    def mean_cosine(descriptors: torch.Tensor) -> float:
        return float((descriptors @ descriptors.T).mean())

    with torch.no_grad():
        assert mean_cosine(plain(None, grid)) > 0.95
        # Training mode: batch statistics; the differences between tiles are what is left.
        assert mean_cosine(standardised.train()(None, grid)) < 0.2


def test_a_resnet_weights_file_without_the_unbuilt_stages_loads(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(2)
    published = resnet18(weights=None).state_dict()
    # A trunk trained on stages 2 and 3 has no layer4 (and no classifier).
    cut = {key: value for key, value in published.items() if not key.startswith(("layer4", "fc"))}
    path = tmp_path / "trunk.pth"
    torch.save(cut, path)
    card = ModelCard(stages=[2, 3], input_size=32, hidden_dim=64)
    model = build_model(card, backbone_weights=path)
    loaded = model.trunk.state_dict()["stages.2.0.conv1.weight"]
    assert torch.equal(loaded, published["layer3.0.conv1.weight"])
    with pytest.raises(ValueError, match=r"missing keys \['layer4"):
        build_model(card.model_copy(update={"stages": [4]}), backbone_weights=path)
