import pytest
from pydantic import ValidationError

from indexer.learn.config import TrainConfig, TrainConfigError, recorded_config
from model import AugmentationConfig, ModelCard, ModelSpec
from model.card import STAIN_VARIANCE_FLOOR

# The training record a card carried before the model settings were nested under `model`.
FLAT_RECORD = {
    "data": "archive",
    "out": "run",
    "epochs": 40,
    "minutes": None,
    "batch_size": 16,
    "learning_rate": 0.001,
    "weight_decay": 1e-05,
    "warmup_fraction": 0.05,
    "seed": 3,
    "temperature": 0.5,
    "codeword_regularizer": 1.0,
    "reset_dead_codewords": True,
    "backbone": "resnet34",
    "small_input_stem": False,
    "stages": [2, 3],
    "pooling": ["spoc", "mac", "gem"],
    "hidden_dim": 512,
    "num_codebooks": 4,
    "codebook_size": 256,
    "codeword_dim": 8,
    "soft_quantization_scale": 5.0,
    "input_size": 64,
    "preload_size": 128,
    "backbone_weights": None,
    "augmentation": AugmentationConfig().model_dump(),
    "validation_groups": ["g1"],
    "test_groups": ["g2", "g3"],
    "validation_fraction": 0.15,
    "test_fraction": 0.3,
    "validate_every": 10,
    "checkpoint_every_minutes": 2.0,
    "device": "auto",
    "precision": "auto",
    "threads": None,
}


def test_defaults_nest_the_model_spec_and_the_augmentation_recipe() -> None:
    config = TrainConfig(data="archive", out="run")
    assert config.model == ModelSpec() and config.augmentation == AugmentationConfig()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"model": {"codebook_size": 12}}, "codebook_size"),
        ({"model": {"stages": [3, 2]}}, "stages"),
        ({"model": {"pooling": ["avg"]}}, "pooling"),
        ({"augmentation": {"hed_p": 1.5}}, "hed_p"),
        ({"precision": "fp16"}, "precision"),
        ({"device": "gpu"}, "device"),
        ({"epoch": 3}, "epoch"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field(
    settings: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainConfig.model_validate({"data": "archive", "out": "run", **settings})


def test_held_out_fractions_must_leave_groups_for_training() -> None:
    with pytest.raises(ValidationError, match="below 1"):
        TrainConfig(data="archive", out="run", validation_fraction=0.5, test_fraction=0.5)


def test_assignments_are_validated_too() -> None:
    config = TrainConfig(data="archive", out="run")
    with pytest.raises(ValidationError, match="epochs"):
        config.epochs = -1


def test_the_card_carries_the_spec_and_the_whole_config() -> None:
    config = TrainConfig(data="archive", out="run", model=ModelSpec(num_codebooks=4))
    card = config.model_card("fingerprint")
    assert card.num_codebooks == 4 and card.dataset_fingerprint == "fingerprint"
    assert card.training == config.model_dump(mode="json")
    assert recorded_config(card) == config


def test_a_card_written_before_nesting_reads_back_as_the_same_settings() -> None:
    config = recorded_config(ModelCard(training=FLAT_RECORD))
    assert config.model.backbone == "resnet34" and config.model.codebook_size == 256
    assert config.seed == 3 and config.test_groups == ["g2", "g3"]
    flattened = {**config.model_dump(exclude={"model"}), **config.model.model_dump()}
    # Settings added since take their defaults.
    assert flattened == {
        **FLAT_RECORD,
        "freeze_backbone": False,
        "train_last_blocks": None,
        "stain_descriptor": False,
        "stain_histogram_bins": 6,
        "stain_variance_floor": STAIN_VARIANCE_FLOOR,
        "refit_codebooks": True,
        "cached_views": 0,
        "view_cache_dir": None,
        "negative_queue": 0,
        "neighbour_support": 0,
        "neighbour_weight": 0.5,
    }


def test_a_card_without_a_training_record_is_refused_clearly() -> None:
    with pytest.raises(TrainConfigError, match="records no training run"):
        recorded_config(ModelCard())
    with pytest.raises(TrainConfigError, match="not a valid training config"):
        recorded_config(ModelCard(training={"data": "archive"}))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({}, 128),  # 64 px input: 128 px keeps a quarter-area crop at full detail
        ({"backbone": "kaiko-vits16"}, 224),
        ({"backbone": "uni"}, 224),
        ({"backbone": "resnet18", "input_size": 256}, 256),
    ],
)
def test_images_are_preloaded_by_default_never_smaller_than_the_network_input(
    model: dict[str, object], expected: int
) -> None:
    config = TrainConfig.model_validate({"data": "archive", "out": "run", "model": model})
    assert config.preload_size is None
    assert config.preload_side() == expected >= config.model.input_size


def test_an_explicit_preload_size_is_kept() -> None:
    assert TrainConfig(data="archive", out="run", preload_size=96).preload_side() == 96


def test_the_stain_branch_setting_round_trips_through_the_card() -> None:
    config = TrainConfig(
        data="archive", out="run", model=ModelSpec(stain_descriptor=True, stain_histogram_bins=4)
    )
    card = config.model_card("fingerprint")
    assert card.stain_descriptor and card.stain_histogram_bins == 4
    read_back = recorded_config(ModelCard.model_validate(card.model_dump(mode="json")))
    assert read_back == config and read_back.model.stain_descriptor


def test_cached_views_refuse_the_stain_branch_which_needs_each_views_pixels() -> None:
    with pytest.raises(ValidationError, match="stain-descriptor"):
        TrainConfig(
            data="archive",
            out="run",
            cached_views=4,
            model=ModelSpec(freeze_backbone=True, stain_descriptor=True),
        )


def test_a_stain_view_without_the_stain_branch_is_refused_clearly() -> None:
    with pytest.raises(ValidationError, match="add --stain-descriptor"):
        TrainConfig.model_validate(
            {"data": "archive", "out": "run", "augmentation": {"stain_branch_view": "geometric"}}
        )
