"""A Docker engine and Compose for the deployment tests: found, checked, and set up as a user would.

Nothing here starts an engine: `.ci/run` does where it can (docs/docker.md). Each check returns
the reason it cannot go on, so the tests skip saying why instead of failing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MINIMUM_COMPOSE = (2, 24)
# The stand-ins scripts/debian-base-images makes from Debian packages, by build argument.
STAND_INS = {
    "PYTHON_IMAGE": "histosearch-base/python:3.11-bookworm",
    "NODE_IMAGE": "histosearch-base/node:bookworm",
}
DOCKER_HUB = "https://registry-1.docker.io/v2/"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu/torch/"


def run(
    command: Sequence[str], timeout: float, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A command with a deadline; its output in the error when it fails."""
    result = subprocess.run(
        list(command),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def docker_engine_problem() -> str | None:
    """None when `docker info` answers, else why not."""
    if shutil.which("docker") is None:
        return "no `docker` command (install docker.io, or Docker Engine 20.10+)"
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[-300:]}"
    return None


def compose_command() -> tuple[list[str] | None, str]:
    """The Compose command (`docker compose`, else `docker-compose`) and its version, or None and
    why none will do (Compose v1 and releases before 2.24 reject the compose file)."""
    found = []
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = run([*command, "version", "--short"], timeout=30, check=False)
        except subprocess.TimeoutExpired:
            continue
        match = re.match(r"v?(\d+)\.(\d+)", result.stdout.strip())
        if result.returncode != 0 or match is None:
            continue
        version = (int(match.group(1)), int(match.group(2)))
        if version >= MINIMUM_COMPOSE:
            return command, result.stdout.strip()
        found.append(f"{' '.join(command)} {result.stdout.strip()}")
    seen = f" (found {', '.join(found)})" if found else ""
    return None, f"no Compose {'.'.join(map(str, MINIMUM_COMPOSE))} or newer{seen}"


def reachable(url: str, timeout: float = 10) -> bool:
    """Whether an HTTPS server answers at all (any HTTP status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name], timeout=60, check=False).returncode == 0


@dataclass
class BaseImages:
    """The build arguments for the base images, and the stand-ins this run made (to remove)."""

    arguments: dict[str, str] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    how: str = "the Dockerfile's defaults from Docker Hub"


def base_images() -> BaseImages:
    """PYTHON_IMAGE / NODE_IMAGE when given; Docker Hub's when it answers; else Debian stand-ins."""
    given = {name: os.environ[name] for name in STAND_INS if os.environ.get(name)}
    if given:
        return BaseImages(given, how="PYTHON_IMAGE / NODE_IMAGE from the environment")
    if reachable(DOCKER_HUB):
        return BaseImages()
    if shutil.which("debootstrap") is None:
        raise BaseImageError(
            "Docker Hub cannot be reached and debootstrap is missing to make stand-ins"
            " (apt-get install debootstrap)"
        )
    missing = [image for image in STAND_INS.values() if not image_exists(image)]
    started = time.monotonic()
    run([str(ROOT / "scripts" / "debian-base-images")], timeout=1200)
    seconds = time.monotonic() - started
    how = f"stand-ins from Debian packages (scripts/debian-base-images, {seconds:.0f} s)"
    return BaseImages(dict(STAND_INS), made=missing, how=how)


class BaseImageError(RuntimeError):
    """No base images can be had on this machine."""


def torch_arguments() -> dict[str, str]:
    """TORCH_INDEX_URL / TORCH_BUILD when given; else the CPU build where its index answers, and
    PyPI's CUDA build, said so in the image's label, where it does not."""
    given = {
        name: os.environ[name] for name in ("TORCH_INDEX_URL", "TORCH_BUILD") if name in os.environ
    }
    if given:
        return given
    if reachable(CPU_TORCH_INDEX):
        return {}
    return {"TORCH_INDEX_URL": "", "TORCH_BUILD": "cuda"}


def copy_working_tree(target: Path) -> Path:
    """The repository's files as a clone has them (tracked, plus untracked ones git does not
    ignore), so the test's .env and build outputs never touch the developer's checkout."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        timeout=60,
        cwd=ROOT,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree, or a submodule
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target
