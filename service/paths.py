"""What the service may say about where things came from: names, never the server's own paths.

An index built from an absolute archive path stores absolute sources, and a model card records
the training data and run folders; answers over HTTP carry only what locates an item within its
archive (a relative source) or, failing that, the bare file name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from indexer.index.store import ItemRecord


def looks_like_machine_path(text: str) -> bool:
    """Absolute POSIX or Windows paths, home-relative ones and UNC shares."""
    return (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or bool(PureWindowsPath(text).drive)
        or text.startswith("~")
    )


def file_name(text: str) -> str:
    """The last component of a POSIX or Windows path."""
    return PureWindowsPath(PurePosixPath(text).name).name


def public_text(text: str) -> str:
    """``text`` unchanged unless it is a machine path; then only its file name."""
    return file_name(text) if looks_like_machine_path(text) else text


def display_source(record: ItemRecord) -> str:
    """The source to show for an item: the store's display form (``<archive>/<path in it>``),
    checked once more here, so that no answer can carry a path of this machine."""
    return public_text(record.display_source)


def without_paths(value: Any) -> Any:
    """A copy of a JSON-like value (a model card) with every path cut down to its file name.

    Relative paths too: a card's training data and run folders are paths of the machine that
    trained it, relative to wherever that run started; the names are what identify them.
    """
    if isinstance(value, str):
        return (
            file_name(value) if looks_like_machine_path(value) or _has_separator(value) else value
        )
    if isinstance(value, Mapping):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(item) for item in value]
    return value


def _has_separator(text: str) -> bool:
    return "/" in text or "\\" in text
