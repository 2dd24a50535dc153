"""What every benchmark shares: where things are, and one way to write a result.

`write_result` stamps each result with what is needed to reproduce and compare it: the git commit
(and whether the tree had uncommitted changes), the command line, the machine (CPU model, cores,
load average) and the date. Figures from different machines or commits are not comparable, and a
result that does not say which it came from cannot be checked.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support.data import REPO_ROOT, shared_data_root

RESULTS = REPO_ROOT / "benchmarks" / "results"

__all__ = [
    "REPO_ROOT",
    "RESULTS",
    "provenance",
    "repository_relative",
    "shared_data_root",
    "write_result",
]


def repository_relative(path: Path) -> Path:
    """`path` relative to the repository root, so results name no path of the measuring machine."""
    return Path(os.path.relpath(os.path.abspath(path), REPO_ROOT))


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """Where a figure came from: commit, command, machine and date."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(["python", *_invocation(), *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_write": [round(value, 2) for value in load],
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _invocation() -> list[str]:
    """`-m <module>` when this process runs a module, else the script's path."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", str(spec.name)]
    return [sys.argv[0]]


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write `result` as JSON at `path` with its provenance under the key "provenance"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {"provenance": provenance(), **result}
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    return path
