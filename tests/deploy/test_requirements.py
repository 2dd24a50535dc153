"""The image build's package list (docker/requirements.py): what pyproject.toml declares, so the
layer installed before the source holds every package the project needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "requirements.py"


def listed(extras: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), extras],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.splitlines()


def test_the_list_is_the_base_dependencies_then_each_named_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    assert listed("cpu") == project["dependencies"] + optional["cpu"]
    assert listed("cpu,ray") == project["dependencies"] + optional["cpu"] + optional["ray"]
    assert listed("gpu") == project["dependencies"] + optional["gpu"]


def test_an_unknown_extra_stops_the_build_naming_it():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), "cpu,rays"],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "unknown extra rays" in run.stderr


def test_every_listed_package_is_pinned_by_the_constraints():
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for requirement in listed("cpu,ray"):
        name = requirement.split(";")[0]
        for mark in "[<>=!~ ":
            name = name.split(mark)[0]
        assert name.lower().replace("_", "-") in pins, requirement
