"""Where an archive's images are stored from: paths relative to the archive folder, and its name.

An index keeps no path of the machine that built it: an item's ``source`` is the image's path
relative to the archive folder named at index time, and ``archive`` is that folder's NAME. The
resume journal is keyed the same way (``<archive>/<source>``), so a re-run over the same archive
skips finished files even after the archive moved to another disk or machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveRoot:
    """The archive folder (absolute, in this process only) that sources are relative to."""

    folder: Path

    @classmethod
    def of(cls, paths: Sequence[Path], folder: Path | None = None) -> ArchiveRoot:
        """``folder`` when every path lies inside it, else the deepest folder holding them all."""
        absolute = [Path(os.path.abspath(path)) for path in paths]
        if folder is not None:
            root = Path(os.path.abspath(folder))
            outside = [path for path in absolute if not path.is_relative_to(root)]
            if not outside:
                return cls(root)
            log.warning(
                "%d images lie outside %s (first: %s): sources are stored relative to the "
                "folder holding all of them",
                len(outside),
                root,
                outside[0],
            )
        if not absolute:
            return cls(Path(os.path.abspath(folder or ".")))
        return cls(Path(os.path.commonpath([str(path.parent) for path in absolute])))

    @property
    def name(self) -> str | None:
        """What is stored of the folder: its name (None for a file-system root)."""
        return self.folder.name or None

    def source_of(self, path: Path) -> str:
        """``path`` relative to the archive folder, with forward slashes."""
        return Path(os.path.abspath(path)).relative_to(self.folder).as_posix()


def archive_folder(data: Path) -> Path:
    """The archive folder of a ``--data`` argument: that folder, or a CSV manifest's folder."""
    return data if data.is_dir() else data.parent


def journal_key(archive: str | None, source: str) -> str:
    """The resume journal's name for a source: ``<archive>/<source>``."""
    return source if archive is None else f"{archive}/{source}"
