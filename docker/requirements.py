"""Print the packages pyproject.toml asks for, with the named extras, one a line.

The image builds install these in a layer of their own before the source is copied, so that a
change of code rebuilds in seconds instead of reinstalling every package (7-10 minutes on a
2-core machine); the project itself is then installed without dependencies.

Usage: python docker/requirements.py pyproject.toml cpu,ray
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies, then each extra's, in order; an unknown extra is an error."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(
            f"unknown extra {', '.join(unknown)}: {pyproject} declares {', '.join(optional)}"
        )
    found: list[str] = list(project["dependencies"])
    for extra in extras:
        found.extend(optional[extra])
    return found


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    extras = [extra for extra in argv[2].split(",") if extra]
    sys.stdout.write("".join(f"{line}\n" for line in requirements(Path(argv[1]), extras)))


if __name__ == "__main__":
    main(sys.argv)
