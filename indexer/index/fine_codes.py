"""Where an index's second-stage codes live: SQLite (durable per add), snapshot files, and RAM.

- SQLite: table ``fine_codes (item_id, code)`` in ``metadata.sqlite`` (a feature row block
  holds its rows' codes in its own record), written and deleted in the same transaction as the
  item (`MetadataStore.insert`, ``insert_rows`` and ``delete``), so an acknowledged add keeps its
  fine code through a crash; ``MetadataStore.fine_codes_after`` reads them back; the trained
  range is the property ``fine_quantiser``.
- Snapshot: ``fine.<gen>.npy`` (N x D uint8) and ``fine-ids.<gen>.npy`` (N int64, increasing),
  written with the codes' snapshot and committed by the same manifest; opened with
  ``np.load(mmap_mode="r")``, so they cost disk and page cache, not the process's RAM.
- RAM: only the codes added since the last snapshot (replayed from SQLite on open), at most the
  writer's flush interval of them.

Removed items are left out of the next snapshot; until then the searchable table never puts
them on a shortlist, so their fine codes are never read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.index.errors import SnapshotMismatchError
from indexer.index.manifest import FileEntry, Snapshot, fine_ids_name, fine_name
from indexer.index.second_stage import FineCodeArray, IdArray
from model.atomic import atomic_write

QUANTISER_PROPERTY = "fine_quantiser"
# Rows copied per step when a snapshot file is written (bounds the float of a 10^7-item copy).
_COPY_CHUNK = 1 << 20


class FineCodes:
    """The fine codes of the live items: a memory-mapped snapshot plus the adds since.

    Each part is one (ids, codes) tuple replaced whole, so a reader outside the index's lock (a
    snapshot being written) never sees ids of one state with codes of another.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._snapshot: tuple[IdArray, FineCodeArray] = self._empty()
        self._recent: tuple[IdArray, FineCodeArray] = self._empty()

    def _empty(self) -> tuple[IdArray, FineCodeArray]:
        return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.uint8)

    def reset(self, ids: IdArray, codes: FineCodeArray) -> None:
        """Hold ``ids`` / ``codes`` (increasing ids) as the snapshot, no recent adds."""
        self._snapshot, self._recent = (ids, codes), self._empty()

    def rebase(self, ids: IdArray, codes: FineCodeArray, last_id: int) -> None:
        """A new snapshot reaching ``last_id``: keep only the adds after it."""
        recent_ids, recent_codes = self._recent
        newer = recent_ids > last_id
        self._snapshot, self._recent = (ids, codes), (recent_ids[newer], recent_codes[newer])

    def append(self, ids: IdArray, codes: FineCodeArray) -> None:
        """Codes of items added after the snapshot (ids above every id held)."""
        if len(ids):
            recent_ids, recent_codes = self._recent
            self._recent = (
                np.concatenate([recent_ids, ids]),
                np.concatenate([recent_codes, codes]),
            )

    def codes_of(self, item_ids: IdArray) -> FineCodeArray:
        """(N, D) codes of held ids, in the order asked; KeyError for an id not held."""
        (snapshot_ids, snapshot_codes), (recent_ids, recent_codes) = self._snapshot, self._recent
        out = np.empty((len(item_ids), self.dim), dtype=np.uint8)
        in_snapshot = _positions(snapshot_ids, item_ids)
        recent = _positions(recent_ids, item_ids)
        missing = (in_snapshot < 0) & (recent < 0)
        if missing.any():
            raise KeyError(f"no fine code for items {item_ids[missing][:5].tolist()}")
        found = in_snapshot >= 0
        out[found] = snapshot_codes[in_snapshot[found]]
        out[~found] = recent_codes[recent[~found]]
        return out

    def ram_bytes(self) -> int:
        """Bytes held in the process's memory (the memory-mapped snapshot is not)."""
        recent_ids, recent_codes = self._recent
        return int(recent_ids.nbytes + recent_codes.nbytes)

    def write_generation(
        self, directory: Path, generation: int, live_ids: IdArray
    ) -> tuple[FileEntry, FileEntry]:
        """Write the codes of ``live_ids`` (increasing) as ``generation``'s two files."""
        from indexer.index.snapshot_files import file_entry

        ids_path, codes_path = (
            directory / fine_ids_name(generation),
            directory / fine_name(generation),
        )

        def write_codes(path: Path) -> None:
            if len(live_ids) == 0:
                _save(path, np.zeros((0, self.dim), dtype=np.uint8))
                return
            out = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.uint8, shape=(len(live_ids), self.dim)
            )
            for start in range(0, len(live_ids), _COPY_CHUNK):
                out[start : start + _COPY_CHUNK] = self.codes_of(
                    live_ids[start : start + _COPY_CHUNK]
                )
            out.flush()
            del out

        atomic_write(codes_path, write_codes)
        atomic_write(ids_path, lambda path: _save(path, np.asarray(live_ids, dtype=np.int64)))
        return file_entry(codes_path), file_entry(ids_path)

    def load_generation(self, directory: Path, snapshot: Snapshot, check: bool = True) -> None:
        """Memory-map the committed snapshot's fine files, checked against the manifest (size
        and SHA-256; ``check`` False for the files this process has just written)."""
        from indexer.index.snapshot_files import check_file

        if snapshot.fine is None or snapshot.fine_ids is None:
            raise SnapshotMismatchError("the snapshot has no second-stage codes")
        codes_name, ids_name = snapshot.fine_files
        if check:
            check_file(directory, codes_name, snapshot.fine)
            check_file(directory, ids_name, snapshot.fine_ids)
        try:
            codes = np.load(directory / codes_name, mmap_mode="r", allow_pickle=False)
            ids = np.load(directory / ids_name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise SnapshotMismatchError(f"{codes_name} is unreadable: {error}") from error
        if codes.shape != (snapshot.items, self.dim) or ids.shape != (snapshot.items,):
            raise SnapshotMismatchError(
                f"{codes_name} holds {codes.shape} codes, expected ({snapshot.items}, {self.dim})"
            )
        self.reset(ids, codes)

    def load_committed(self, directory: Path, snapshot: Snapshot) -> None:
        """After a flush: map the new generation, keeping the adds it does not reach."""
        recent = self._recent
        # Hashing the files again would read N x D bytes once more per flush.
        self.load_generation(directory, snapshot, check=False)
        self._recent = recent
        self.rebase(*self._snapshot, snapshot.last_item_id)


def _save(path: Path, array: npt.NDArray[np.generic]) -> None:
    # Through a handle: given a name, np.save appends ".npy" to the temporary's.
    with path.open("wb") as stream:
        np.save(stream, array)


def _positions(held: npt.NDArray[np.int64], wanted: IdArray) -> npt.NDArray[np.intp]:
    """Position of each wanted id in the increasing ``held`` ids, -1 where absent."""
    if len(held) == 0:
        return np.full(len(wanted), -1, dtype=np.intp)
    at = np.searchsorted(held, wanted)
    clipped = np.minimum(at, len(held) - 1)
    return np.where(held[clipped] == wanted, clipped, -1).astype(np.intp)
