import pytest
import torch

from model import AugmentationConfig, build_augmentation
from model.augment import RandomHEDJitter
from model.augment.colour import colour_jitter
from model.augment.geometry import dihedral_symmetries
from model.augment.pipeline import build_geometric_augmentation, build_photometric_augmentation


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


def _dihedral_images(image: torch.Tensor) -> list[torch.Tensor]:
    """The eight flips and quarter-turns of a (3, H, W) image, written out by hand."""
    turns = [torch.rot90(image, times, dims=(1, 2)) for times in range(4)]
    return turns + [turn.flip(2) for turn in turns]


def test_dihedral_steps_give_only_the_eight_symmetries_of_the_input_and_all_of_them() -> None:
    torch.manual_seed(1)
    image = torch.rand(3, 16, 16)
    symmetries = _dihedral_images(image)
    steps = torch.nn.Sequential(*dihedral_symmetries())
    views = steps(image.expand(64, 3, 16, 16).clone())
    matched = set()
    for view in views:
        # A flip or quarter-turn to float rounding (kornia turns by a warp): no pixel blended.
        found = [i for i, s in enumerate(symmetries) if torch.allclose(view, s, atol=1e-4)]
        assert len(found) == 1
        matched.add(found[0])
    assert len(matched) >= 6  # 64 draws of 8 equally likely symmetries


def test_colour_jitter_changes_colours_but_moves_no_pixel() -> None:
    # A checkerboard of two tissue colours: a colour-only change maps every pixel of one input
    # colour to one output colour, so the checkerboard must survive untouched in layout.
    pink, purple = torch.tensor([0.9, 0.6, 0.8]), torch.tensor([0.5, 0.25, 0.65])
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 == 0
    image = torch.where(board, pink[:, None, None], purple[:, None, None])
    torch.manual_seed(2)
    jittered = colour_jitter(0.4, 0.1, p=1.0)(image.expand(4, 3, 16, 16).clone())
    for view in jittered:
        on, off = view[:, board], view[:, ~board]
        torch.testing.assert_close(on, on[:, :1].expand_as(on), atol=1e-5, rtol=0)
        torch.testing.assert_close(off, off[:, :1].expand_as(off), atol=1e-5, rtol=0)
        assert float((on[:, 0] - pink).abs().max()) > 0.01  # the colour did change
    assert not torch.allclose(jittered[0], jittered[1])  # each view draws its own jitter


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


def test_the_pipeline_is_its_geometric_steps_then_its_photometric_ones() -> None:
    config = AugmentationConfig(rotation_degrees=10)
    steps = [type(step) for step in build_augmentation(config, 32)]
    geometric = [type(step) for step in build_geometric_augmentation(config, 32)]
    photometric = [type(step) for step in build_photometric_augmentation(config, 32)]
    assert steps == geometric + photometric and geometric and photometric


def test_the_geometric_steps_move_pixels_but_keep_their_colours() -> None:
    batch = _tissue_like_batch()
    crops = build_geometric_augmentation(AugmentationConfig(min_crop_scale=1.0), 48)(batch)
    assert not torch.allclose(crops, batch)
    torch.testing.assert_close(crops.mean(dim=(2, 3)), batch.mean(dim=(2, 3)), atol=0.01, rtol=0)
