"""Real `histosearch serve` processes for the service benchmarks: port, start, wait, percentiles."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np

from support.live_server import free_port

__all__ = ["free_port", "launch_until_ready", "percentile"]

# A cold start loads torch, the model and the index: well under a minute here, so two is a hang.
READY_TIMEOUT_S = 120.0


def launch_until_ready(
    command: Sequence[str], env: Mapping[str, str], log: Path, url: str
) -> subprocess.Popen[bytes]:
    """Start ``command`` (its output appended to ``log``) and return once ``url``/ready says 200."""
    with log.open("ab") as sink:
        process = subprocess.Popen(list(command), env=dict(env), stdout=sink, stderr=sink)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"server not ready in {READY_TIMEOUT_S:.0f} s")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, NaN for no values."""
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")
