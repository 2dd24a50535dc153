"""The image build's torch check (docker/check_torch_build.py), against the torch installed here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "check_torch_build.py"
INSTALLED = "cpu" if torch.version.cuda is None else "cuda"
OTHER = "cuda" if INSTALLED == "cpu" else "cpu"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_torch_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_goes_on_when_torch_is_the_build_asked_for(check, capsys):
    assert check.main(["check", INSTALLED, "https://example.invalid/whl/cpu"]) == 0
    assert f"installed torch {torch.__version__}" in capsys.readouterr().out


def test_the_build_stops_naming_what_it_got_and_both_ways_out(check, capsys):
    assert check.main(["check", OTHER, "https://example.invalid/whl/cpu"]) == 1
    message = capsys.readouterr().err
    assert f"TORCH_BUILD={OTHER} asks for the {OTHER} build" in message
    assert torch.__version__ in message and "example.invalid" in message
    assert f"--build-arg TORCH_BUILD={INSTALLED}" in message
    assert "--build-arg TORCH_INDEX_URL=" in message


def test_an_unknown_build_name_is_refused(check, capsys):
    assert check.main(["check", "gpu"]) == 2
    assert "expected one of cpu, cuda" in capsys.readouterr().err
