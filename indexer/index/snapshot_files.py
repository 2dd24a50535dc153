"""The files of one snapshot generation: ``codes.<gen>.faiss`` and ``columns.<gen>.npz``.

A snapshot commits in three steps, so that a crash at any instant leaves either the whole new
snapshot or the whole old one:

1. write the new generation's files under names no manifest points to yet (each fsynced);
2. replace ``manifest.json`` (fsynced, the folder too): from here on the new generation counts;
3. delete every other generation's files, and temporaries that a killed write left behind.

A crash before step 2 leaves unreferenced new files (removed by the next snapshot); a crash
before step 3 leaves unreferenced old ones. Opening only ever reads what the manifest names, after
checking size and SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.index.codetable import Columns
from indexer.index.errors import SnapshotMismatchError
from indexer.index.manifest import (
    MANIFEST,
    FileEntry,
    Snapshot,
    codes_name,
    columns_name,
)
from indexer.index.metadata import TERM_KINDS
from indexer.index.pq import (
    CodeArray,
    FloatArray,
    IdArray,
    codebook_fingerprint,
    codebooks_of,
    flat_pq_index,
    pack_codes,
    packed_codes_of,
    unpack_codes,
)
from model.atomic import atomic_write

log = logging.getLogger(__name__)

# Names of every snapshot file any generation can have, and the temporaries `atomic_write` makes
# for them (".<name>.<random>") that a killed process leaves behind.
_SNAPSHOT_FILE = re.compile(
    r"^(codes\.faiss|columns\.npz|codes\.\d+\.faiss|columns\.\d+\.npz)$"
    r"|^\.(codes|columns)\.(\d+\.)?(faiss|npz)\..+$|^\.manifest\.json\..+$"
    # The second stage's files (indexer/index/fine_codes.py) and their temporaries.
    r"|^\.?fine(-ids)?\.\d+\.npy(\..+)?$"
)


def write_generation(
    directory: Path,
    generation: int,
    codebooks: FloatArray,
    ids: IdArray,
    codes: CodeArray,
    columns: Columns,
) -> tuple[FileEntry, FileEntry]:
    """Step 1: write the codes and columns of ``generation``; returns their size and digest."""
    codebook_size = codebooks.shape[1]
    wrapper = faiss.IndexIDMap(flat_pq_index(codebooks))
    if len(ids):
        wrapper.add_sa_codes(pack_codes(codes, codebook_size), ids)
    codes_path = directory / codes_name(generation)
    atomic_write(codes_path, lambda path: faiss.write_index(wrapper, str(path)))

    def write_columns(path: Path) -> None:
        with path.open("wb") as stream:
            np.savez(
                stream, labels=columns.labels, datasets=columns.datasets, groups=columns.groups
            )

    columns_path = directory / columns_name(generation)
    atomic_write(columns_path, write_columns)
    return file_entry(codes_path), file_entry(columns_path)


def remove_other_generations(directory: Path, keep: Snapshot) -> list[str]:
    """Step 3: delete snapshot files and temporaries the committed ``keep`` does not name."""
    removed = []
    for path in directory.iterdir():
        if _SNAPSHOT_FILE.match(path.name) and path.name not in keep.files:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.debug("removed files of older snapshots: %s", ", ".join(sorted(removed)))
    return sorted(removed)


def read_generation(
    directory: Path, snapshot: Snapshot, codebooks: FloatArray, code_size: int
) -> tuple[CodeArray, IdArray, Columns]:
    """The codes, ids and columns of the committed snapshot, checked against the manifest.

    Raises SnapshotMismatchError (the caller rebuilds from SQLite) naming the first disagreement.
    """
    num_codebooks, codebook_size, _ = codebooks.shape
    check_file(directory, snapshot.codes_file, snapshot.codes)
    check_file(directory, snapshot.columns_file, snapshot.columns)
    try:
        wrapper: Any = faiss.read_index(str(directory / snapshot.codes_file))
        inner = faiss.downcast_index(wrapper.index)
    except RuntimeError as error:  # FAISS reports unreadable files as RuntimeError
        raise SnapshotMismatchError(f"{snapshot.codes_file} is unreadable: {error}") from error
    if not isinstance(inner, faiss.IndexPQ) or wrapper.ntotal != snapshot.items:
        raise SnapshotMismatchError(
            f"{snapshot.codes_file} holds {wrapper.ntotal} codes but {MANIFEST} says "
            f"{snapshot.items}"
        )
    if inner.code_size != code_size:
        raise SnapshotMismatchError(
            f"{snapshot.codes_file} has {inner.code_size}-byte codes, {MANIFEST} says {code_size}"
        )
    if codebook_fingerprint(codebooks_of(inner)) != codebook_fingerprint(codebooks):
        raise SnapshotMismatchError(
            f"the codebooks in {snapshot.codes_file} are not the model's codebooks"
        )
    ids: IdArray = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
    codes = unpack_codes(packed_codes_of(inner), num_codebooks, codebook_size)
    return codes, ids, _read_columns(directory / snapshot.columns_file, len(ids))


def _read_columns(path: Path, expected: int) -> Columns:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            columns = Columns(arrays["labels"], arrays["datasets"], arrays["groups"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise SnapshotMismatchError(f"{path.name} is unreadable: {error}") from error
    for name, values in zip(
        TERM_KINDS, (columns.labels, columns.datasets, columns.groups), strict=True
    ):
        if len(values) != expected:
            raise SnapshotMismatchError(
                f"{path.name} has {len(values)} {name} entries for {expected} codes"
            )
    return columns


def check_file(directory: Path, name: str, entry: FileEntry) -> None:
    """SnapshotMismatchError unless ``name`` exists with the recorded size and SHA-256."""
    path = directory / name
    if not path.is_file():
        raise SnapshotMismatchError(f"{name}, named by {MANIFEST}, is missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise SnapshotMismatchError(
            f"{name} has {size} bytes but {MANIFEST} recorded {entry.bytes}: the snapshot is "
            "damaged or from another write"
        )
    if sha256_of(path) != entry.sha256:
        raise SnapshotMismatchError(f"{name} does not match the checksum in {MANIFEST}")


def file_entry(path: Path) -> FileEntry:
    return FileEntry(bytes=path.stat().st_size, sha256=sha256_of(path))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
