import argparse
import json
from pathlib import Path

import pytest

from indexer.cli import build_parser, main
from tests.indexer.learn.test_training import _write_tiny_dataset


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = subparsers.choices[name]
    return sub


# Every verb and the flags a user's scripts rely on; verbs and flags may be added, never dropped.
KEY_FLAGS = {
    "delete": ["--index"],
    "demo": [
        "--archive",
        "--workdir",
        "--index",
        "--train-epochs",
        "--train-minutes",
        "--port",
        "--no-serve",
    ],
    "evaluate": ["--checkpoint", "--data", "--source", "--out", "--part", "--ks", "--device"],
    "index": [
        "--data",
        "--index",
        "--checkpoint",
        "--source",
        "--dataset",
        "--tile-size",
        "--stride",
        "--min-tissue",
        "--batch-size",
        "--workers",
        "--max-image-pixels",
        "--no-progress",
    ],
    "prepare": [
        "--archive",
        "--workdir",
        "--index",
        "--train-epochs",
        "--train-minutes",
        "--tile-size",
    ],
    "search": ["--index", "-k", "--label", "--dataset", "--exclude-group", "--json"],
    "serve": ["--index", "--host", "--port", "--workers"],
    "stats": ["--index", "--json"],
    "train": ["--data", "--out", "--epochs", "--minutes", "--validation-groups", "--test-groups"],
}


def _help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_the_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_of(capsys)
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert set(KEY_FLAGS) <= listed


@pytest.mark.parametrize("command", sorted(KEY_FLAGS))
def test_each_verbs_help_shows_its_key_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {
        word.rstrip(",")
        for line in _help_of(capsys, command).splitlines()
        for word in line.split()
        if word.startswith("-")
    }
    assert set(KEY_FLAGS[command]) <= options, set(KEY_FLAGS[command]) - options


@pytest.mark.parametrize("command", ["demo", "evaluate", "index", "prepare", "search", "train"])
def test_every_option_is_explained(command: str) -> None:
    parser = _subcommand_parser(command)
    for action in parser._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def test_train_then_evaluate_from_the_command_line(tmp_path: Path, capsys) -> None:
    data = _write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data)]
    split = ["--validation-groups", "g4", "--test-groups", "g3", "g5"]
    tiny = ["--input-size", "32", "--preload-size", "40", "--batch-size", "8", "--threads", "1"]
    assert main(["train", *common, "--out", str(run), "--epochs", "1", *split, *tiny]) == 0
    assert main(["evaluate", *common, "--checkpoint", str(run / "model.pt"), "--ks", "1", "5"]) == 0
    table = capsys.readouterr().out
    assert "SPQ codes (ADC)" in table and "RGB colour histogram" in table
    report = json.loads((run / "evaluation.json").read_text())
    assert report["part"] == "test" and report["num_images"] == 8 and report["num_groups"] == 2
    assert {m["name"] for m in report["methods"]} >= {"SPQ float descriptor", "random resnet18"}
    assert (run / "precision_at_k.png").stat().st_size > 1000
    assert (run / "evaluation.md").read_text().startswith("Dataset")
