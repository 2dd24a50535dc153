"""One way to replace a file so that a crash never leaves half of it: the project's atomic write.

Write to a temporary file in the same folder, fsync it, `os.replace` it over the target, then
fsync the folder so the rename itself survives a power loss. Checkpoints, index snapshots and
manifests all go through `atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create or replace ``path`` with what ``write(temporary_path)`` writes, all or nothing."""
    path = Path(path)
    # A unique name per call: two threads replacing the same file never share a temporary.
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        # mkstemp makes the file private (0600); keep the mode a plain write would give, so a
        # service running as another user can still read a model or an index written here.
        os.chmod(temporary, _mode_for(path))
        write(temporary)
        with temporary.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _mode_for(path: Path) -> int:
    """The replaced file's mode, or what ``open(path, "w")`` would create under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of a byte string."""
    atomic_write(path, lambda temporary: temporary.write_bytes(data))


def fsync_directory(directory: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
