import pytest
import torch

from model import AugmentationConfig, build_augmentation
from model.augment import RandomHEDJitter


def _tissue_like_batch(n: int = 6, size: int = 48) -> torch.Tensor:
    torch.manual_seed(0)
    return (0.6 + 0.3 * torch.rand(n, 3, size, size)).clamp(0, 1)


def test_pipeline_makes_views_of_the_input_size_in_unit_range() -> None:
    augment = build_augmentation(AugmentationConfig(), output_size=32)
    views = augment(_tissue_like_batch())
    assert views.shape == (6, 3, 32, 32)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0


def test_two_calls_give_different_views() -> None:
    augment = build_augmentation(AugmentationConfig(), output_size=32)
    batch = _tissue_like_batch()
    assert not torch.allclose(augment(batch), augment(batch))


def test_hed_jitter_without_strength_is_identity() -> None:
    batch = _tissue_like_batch()
    identity = RandomHEDJitter(scale=0.0, shift=0.0, p=1.0)
    torch.testing.assert_close(identity(batch), batch, atol=1e-4, rtol=1e-4)


def test_hed_jitter_changes_colour_per_image() -> None:
    batch = _tissue_like_batch()
    jittered = RandomHEDJitter(scale=0.3, shift=0.1, p=1.0)(batch)
    shift = (jittered - batch).mean(dim=(2, 3))  # (N, 3) mean colour change
    assert float(shift.abs().max()) > 0.01
    assert not torch.allclose(shift[0], shift[1], atol=1e-3)


def test_hed_jitter_rejects_bad_probability() -> None:
    with pytest.raises(ValueError):
        RandomHEDJitter(p=1.5)


def test_switched_off_steps_are_left_out() -> None:
    lean = AugmentationConfig(dihedral=False, hed_p=0, colour_p=0, grayscale_p=0, blur_p=0)
    assert len(build_augmentation(lean, 32)) == 1
    assert len(build_augmentation(AugmentationConfig(), 32)) == 7
    assert len(build_augmentation(AugmentationConfig.spq_reference(), 32)) == 8


def test_rotation_is_a_step_before_the_crop_only_when_asked_for() -> None:
    rotating = build_augmentation(AugmentationConfig(rotation_degrees=25), 32)
    assert len(rotating) == len(build_augmentation(AugmentationConfig(), 32)) + 1
    assert type(rotating[0]).__name__ == "RandomAffine"
    assert rotating(_tissue_like_batch()).shape == (6, 3, 32, 32)


def test_augmentation_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="blur_p"):
        AugmentationConfig(blur_p=1.5)
    with pytest.raises(ValueError, match="min_crop_scale"):
        AugmentationConfig(min_crop_scale=0)
    with pytest.raises(ValueError, match="Extra inputs"):
        AugmentationConfig.model_validate({"colour": 0.1})
