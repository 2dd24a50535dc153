"""`histosearch train --source features`: its options, generated from the feature run config."""

from __future__ import annotations

import pytest

from indexer.cli import build_parser, main
from indexer.cli.train import feature_config_from_args
from indexer.learn.feature_config import FeatureRunConfig, FeatureTrainConfig

REQUIRED = ["train", "--source", "features", "--data", "rows.npy", "--out", "run"]


def test_feature_options_give_the_validated_run_config_with_the_training_defaults() -> None:
    args = build_parser().parse_args(
        [*REQUIRED, "--feature-model", "uni", "--bits", "32", "--group-column", "patient_id"]
    )
    config = feature_config_from_args(args)
    assert config == FeatureRunConfig(
        source="features",
        data="rows.npy",
        out="run",
        group_column="patient_id",
        training=FeatureTrainConfig(feature_model="uni", bits=32),
    )


def test_an_option_both_sources_have_reaches_the_feature_run_with_its_own_meaning() -> None:
    args = build_parser().parse_args([*REQUIRED, "--feature-model", "uni", "--epochs", "2"])
    assert feature_config_from_args(args).training.epochs == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (REQUIRED, "--feature-model is required with --source features"),
        ([*REQUIRED, "--feature-model", "uni", "--hue", "0.1"], "--hue applies to image training"),
        (
            ["train", "--data", "x", "--out", "y", "--limit", "5"],
            "--limit applies to --source features only",
        ),
    ],
)
def test_options_of_the_other_source_or_a_missing_model_name_are_refused_by_name(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_help_explains_the_feature_options_and_both_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "feature archive and split (--source features)" in text
    assert "--test-groups-file FILE" in text and "--feature-model" in text
    assert (
        "maximum number of epochs (default: 300); --source features: passes over the "
        "training rows (default: 2)" in text
    )
