import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from indexer.cli import build_parser, main
from indexer.cli.options import OptionError
from indexer.cli.train import config_from_args
from indexer.learn.config import TrainConfig
from model import AugmentationConfig, ModelSpec

REPO = Path(__file__).resolve().parents[3]
REQUIRED = ["--data", "archive", "--out", "run"]


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train: argparse.ArgumentParser = subparsers.choices["train"]
    return train


def _leaf_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """Every non-model field, written out here rather than taken from the generator."""
    leaves = []
    for name, field in model.model_fields.items():
        if field.annotation in (ModelSpec, AugmentationConfig):
            leaves += _leaf_fields(field.annotation)
        else:
            leaves.append((name, field))
    return leaves


def _parse(*flags: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *REQUIRED, *flags]))


def test_every_config_field_has_an_option_explained_with_its_default() -> None:
    actions = {flag: a for a in _train_parser()._actions for flag in a.option_strings}
    fields = _leaf_fields(TrainConfig)
    assert len(fields) == 57  # 29 of the run, 15 of the model spec, 13 of the augmentation
    for name, field in fields:
        action = actions["--" + name.replace("_", "-")]
        assert field.description and action.help and action.help.startswith(field.description)
        default = field.get_default(call_default_factory=True)
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert f"(default: {default})" in action.help


def test_train_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name, _ in _leaf_fields(TrainConfig):
        assert "--" + name.replace("_", "-") in text
    assert "K, codewords per sub-space, a power of two (default: 16)" in " ".join(text.split())


def test_no_options_give_the_config_defaults() -> None:
    assert _parse() == TrainConfig(data="archive", out="run")


def test_options_give_the_validated_nested_config() -> None:
    config = _parse(
        *("--epochs", "5", "--num-codebooks", "4", "--codebook-size", "256"),
        *("--pooling", "gem", "attention", "--stages", "3", "4", "--no-dihedral"),
        *("--hue", "0.05", "--precision", "bf16", "--test-groups", "g1", "g2"),
    )
    assert config.epochs == 5 and config.precision == "bf16" and config.test_groups == ["g1", "g2"]
    assert config.model == ModelSpec(
        num_codebooks=4, codebook_size=256, pooling=["gem", "attention"], stages=[3, 4]
    )
    assert config.augmentation == AugmentationConfig(dihedral=False, hue=0.05)
    assert config.model_card("x").bits == 32


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--codebook-size", "12"], "--codebook-size: codebook_size must be a power of two"),
        (["--batch-size", "1"], "--batch-size: Input should be greater than or equal to 2"),
        (["--grayscale-p", "2"], "--grayscale-p: Input should be less than or equal to 1"),
        (["--stages", "3", "2"], "--stages: stages must be listed once each, shallowest first"),
        (["--device", "gpu"], "--device: String should match pattern"),
        (["--validation-fraction", "0.6", "--test-fraction", "0.5"], "must stay below 1"),
    ],
)
def test_invalid_values_are_refused_naming_the_option(flags: list[str], message: str) -> None:
    with pytest.raises(OptionError, match="invalid options") as refused:
        _parse(*flags)
    assert message in str(refused.value)


def test_the_command_reports_invalid_values_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", *REQUIRED, "--codebook-size", "12", "--hue", "0.9"]) == 2
    error = capsys.readouterr().err
    assert "--codebook-size: codebook_size must be a power of two, got 12" in error
    assert "--hue: Input should be less than or equal to 0.5 (got 0.9)" in error


def test_values_argparse_cannot_read_are_refused_by_argparse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _parse("--epochs", "many")
    assert "--epochs: invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--pooling", "avg")
    assert "invalid choice: 'avg'" in capsys.readouterr().err


# Every option `histosearch train` had before its options were generated, with a value.
EARLIER_OPTIONS: dict[str, list[str]] = {
    "--validation-groups": ["g1"],
    "--test-groups": ["g2", "g3"],
    "--validation-fraction": ["0.1"],
    "--test-fraction": ["0.2"],
    "--epochs": ["7"],
    "--minutes": ["1.5"],
    "--batch-size": ["16"],
    "--learning-rate": ["0.01"],
    "--weight-decay": ["0.0001"],
    "--validate-every": ["3"],
    "--checkpoint-every-minutes": ["4"],
    "--resume": [],
    "--seed": ["9"],
    "--backbone": ["resnet34"],
    "--small-input-stem": [],
    "--backbone-weights": ["weights.pt"],
    "--stages": ["2", "4"],
    "--pooling": ["gem"],
    "--input-size": ["96"],
    "--preload-size": ["160"],
    "--num-codebooks": ["4"],
    "--codebook-size": ["64"],
    "--codeword-dim": ["12"],
    "--soft-quantization-scale": ["3"],
    "--temperature": ["0.2"],
    "--codeword-regularizer": ["0.5"],
    "--no-reset-dead-codewords": [],
    "--min-crop-scale": ["0.5"],
    "--rotation-degrees": ["20"],
    "--colour-strength": ["0.2"],
    "--hed-strength": ["0.07"],
    "--grayscale-p": ["0.1"],
    "--device": ["cpu"],
    "--precision": ["fp32"],
    "--threads": ["2"],
}


def test_the_earlier_option_names_still_parse_to_the_same_settings() -> None:
    flags = [item for flag, values in EARLIER_OPTIONS.items() for item in (flag, *values)]
    args = build_parser().parse_args(["train", *REQUIRED, *flags])
    config = config_from_args(args)
    assert args.resume
    expected: dict[str, Any] = {
        "data": "archive",
        "out": "run",
        "validation_groups": ["g1"],
        "test_groups": ["g2", "g3"],
        "validation_fraction": 0.1,
        "test_fraction": 0.2,
        "epochs": 7,
        "minutes": 1.5,
        "batch_size": 16,
        "learning_rate": 0.01,
        "weight_decay": 0.0001,
        "validate_every": 3,
        "checkpoint_every_minutes": 4.0,
        "seed": 9,
        "backbone_weights": "weights.pt",
        "preload_size": 160,
        "temperature": 0.2,
        "codeword_regularizer": 0.5,
        "reset_dead_codewords": False,
        "device": "cpu",
        "precision": "fp32",
        "threads": 2,
        "model": ModelSpec(
            backbone="resnet34",
            small_input_stem=True,
            stages=[2, 4],
            pooling=["gem"],
            input_size=96,
            num_codebooks=4,
            codebook_size=64,
            codeword_dim=12,
            soft_quantization_scale=3.0,
        ),
        "augmentation": AugmentationConfig(
            min_crop_scale=0.5,
            rotation_degrees=20.0,
            colour_strength=0.2,
            hed_scale=0.07,
            hed_shift=0.07,
            grayscale_p=0.1,
        ),
    }
    assert config == TrainConfig(**expected)


def test_hed_scale_or_shift_given_with_hed_strength_takes_precedence() -> None:
    config = _parse("--hed-strength", "0.07", "--hed-shift", "0.01")
    assert (config.augmentation.hed_scale, config.augmentation.hed_shift) == (0.07, 0.01)


def test_the_train_options_are_built_without_loading_torch() -> None:
    # `histosearch --help` builds every verb's options; torch would add seconds to it.
    code = (
        "import sys, argparse\n"
        "from indexer.cli import train\n"
        "train.register(argparse.ArgumentParser().add_subparsers())\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
