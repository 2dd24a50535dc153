"""Schemathesis against a real server: every operation, every check, no disagreement between what
the OpenAPI description says and what the server does.

Run as schemathesis's own command line (the same run an outside reviewer would make), with
bounded examples and a fixed seed, once with reads open and once with reads keyed. Settings and
the one exclusion are in tests/service/schemathesis.toml; image parts are real tiles
(tests/service/schemathesis_hooks.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 15
SEED = 20261201


def schemathesis_run(server: LiveServer, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--no-color",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(params=["open reads", "keyed reads"])
def contract_server(
    request: pytest.FixtureRequest, small_index: Path, tmp_path: Path
) -> Iterator[LiveServer]:
    # Schemathesis adds and deletes items: a copy of the index, per run.
    shutil.copytree(small_index, tmp_path / "index")
    env = {"HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH": "true"} if request.param == "keyed reads" else {}
    server = LiveServer(tmp_path / "index", tmp_path / "server.log", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_server_keeps_to_its_openapi_description(
    contract_server: LiveServer, tmp_path: Path
) -> None:
    if shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("schemathesis is not installed: install the dev extra")
    result = schemathesis_run(contract_server, tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", result.stdout)
    assert selected is not None and selected[1] == selected[2], report
    for phase in ("Coverage", "Fuzzing"):
        assert f"✅  {phase}" in result.stdout, report
