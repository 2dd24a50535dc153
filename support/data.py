"""Where the shared real data sets are, and how a test says that one is missing."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Only the environment variable names another place; the default sits beside the repository.
SHARED_DATA_VARIABLE = "HISTOSEARCH_SHARED_DATA"


def shared_data_root() -> Path:
    """`$HISTOSEARCH_SHARED_DATA`, else `../shared/data` beside the repository."""
    override = os.environ.get(SHARED_DATA_VARIABLE)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


SHARED_DATA = shared_data_root()


def missing_data_reason(dataset: Path | str) -> str | None:
    """Why `dataset` (a path, or a folder name under the shared root) cannot be read, or None."""
    path = SHARED_DATA / dataset if isinstance(dataset, str) else dataset
    if path.exists():
        return None
    return (
        f"needs the shared data set {path.name} at {path}: set ${SHARED_DATA_VARIABLE} "
        "or place the shared data at ../shared/data beside the repository"
    )
