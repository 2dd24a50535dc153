"""The exceptions the index library raises on purpose (all `model.errors.HistosearchError`)."""

from __future__ import annotations

from model.errors import HistosearchError

REPAIR_HINT = "run `histosearch repair --index {directory}` to check and rebuild it"


class IndexDirectoryError(HistosearchError, RuntimeError):
    """An index directory that is missing, damaged, or whose parts disagree with each other."""


class SnapshotMismatchError(IndexDirectoryError):
    """The FAISS snapshot does not match the manifest or SQLite: rebuildable from SQLite."""


class IndexInputError(HistosearchError, ValueError):
    """Vectors, codes or a search request that do not fit this index (wrong shape, NaN, k < 1)."""


def with_repair_hint(message: str, directory: object) -> str:
    """``message`` followed by the command that checks and rebuilds the index directory."""
    return f"{message}; {REPAIR_HINT.format(directory=directory)}"
