import pytest
import torch

from model.pooling import MAC, AttentionPool, CombinedGlobalDescriptor, GeM, SPoC, make_pool


@pytest.fixture
def features() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 5, 3, 4) + 0.1


def test_spoc_is_the_spatial_mean_and_mac_the_maximum(features: torch.Tensor) -> None:
    torch.testing.assert_close(SPoC()(features), features.mean(dim=(2, 3)))
    torch.testing.assert_close(MAC()(features), features.flatten(2).max(dim=2).values)


def test_gem_lies_between_mean_and_max_and_is_the_mean_at_p_one(features: torch.Tensor) -> None:
    gem = GeM(p=3.0)(features)
    assert bool((gem >= SPoC()(features) - 1e-6).all() and (gem <= MAC()(features) + 1e-6).all())
    torch.testing.assert_close(GeM(p=1.0)(features), SPoC()(features))


def test_attention_with_constant_scores_is_the_mean(features: torch.Tensor) -> None:
    pool = AttentionPool(channels=5)
    torch.nn.init.zeros_(pool.score.weight)
    assert pool.score.bias is not None
    torch.nn.init.zeros_(pool.score.bias)
    torch.testing.assert_close(pool(features), features.mean(dim=(2, 3)))


def test_combined_descriptor_is_unit_length_and_sized_by_branches(features: torch.Tensor) -> None:
    head = CombinedGlobalDescriptor([5], pooling=["spoc", "mac", "gem"], branch_dim=7)
    out = head([features])
    assert out.shape == (2, 21) and head.output_dim == 21
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_combined_descriptor_pools_every_stage_with_every_method(features: torch.Tensor) -> None:
    deeper = torch.rand(2, 9, 2, 2) + 0.1
    head = CombinedGlobalDescriptor([5, 9], pooling=["spoc", "gem"], branch_dim=3)
    out = head([features, deeper])
    assert out.shape == (2, 12) and head.output_dim == 12
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    # Each stage's branches see only that stage: changing the deep map leaves the shallow half.
    changed = head([features, torch.rand(2, 9, 2, 2) + 0.1])
    torch.testing.assert_close(changed[:, :6], out[:, :6])
    assert not torch.allclose(changed[:, 6:], out[:, 6:])


def test_unknown_pooling_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="attention, gem, mac, spoc"):
        make_pool("avg", 5)
