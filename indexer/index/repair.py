"""`repair_index`: check an index directory against its SQLite metadata and rebuild its snapshot.

SQLite is the source of truth (every item row holds its code), so a damaged, missing or stale
FAISS snapshot is always rebuilt from it. What SQLite cannot vouch for is reported, not "fixed":
a database that fails ``PRAGMA integrity_check``, a model card or checkpoint other than the ones
the manifest recorded, or codebooks in SQLite or in ``model.pt`` other than the manifest's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexDirectoryError
from indexer.index.manifest import MANIFEST, IndexManifest, read_manifest
from indexer.index.metadata import integrity_problems
from indexer.index.pq import codebook_fingerprint
from indexer.index.snapshot_files import sha256_of
from indexer.index.store import CARD, CHECKPOINT, METADATA, ArchiveIndex

# Reads the codebooks (M, K, d) of the checkpoint at the path, for the card the index recorded.
CheckpointReader = Callable[[Path, IndexManifest], npt.NDArray[np.floating]]
# Integrity problems listed in a report before the rest are summarised as a count.
_SHOWN_PROBLEMS = 5


@dataclass(slots=True)
class RepairReport:
    """What `repair_index` checked, what it did, and what it could not repair."""

    directory: Path
    checked: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return not self.problems


def repair_index(directory: Path, read_checkpoint: CheckpointReader | None = None) -> RepairReport:
    """Check ``directory`` and rebuild its snapshot from SQLite; see the module doc.

    With ``read_checkpoint``, ``model.pt`` is also loaded and its codebooks compared with the
    manifest's (beyond its SHA-256). Nothing is rebuilt once a problem is found.
    """
    directory = Path(directory)
    report = RepairReport(directory)
    manifest = _checked_sources(directory, report, read_checkpoint)
    if manifest is None:
        return report
    try:
        index = ArchiveIndex.open(directory)
    except IndexDirectoryError as error:
        report.problems.append(str(error))
        return report
    with index:
        report.checked.append(f"snapshot on disk: {index.opened_from}")
        index.rebuild_from_metadata(reason="histosearch repair")
        index.flush()
        snapshot = index.snapshot
    assert snapshot is not None  # the flush above committed one
    report.done.append(
        f"rebuilt {snapshot.codes_file} and {snapshot.columns_file} from {METADATA} "
        f"({snapshot.items} items) and committed them in {MANIFEST}; older snapshot files removed"
    )
    return report


def _checked_sources(
    directory: Path, report: RepairReport, read_checkpoint: CheckpointReader | None
) -> IndexManifest | None:
    """The manifest, once SQLite, the card and the checkpoint all check out; else None."""
    database = directory / METADATA
    if not database.is_file():
        report.problems.append(
            f"{directory} has no {METADATA}: the items cannot be recovered from this directory; "
            "restore it from a backup or index the archive again"
        )
        return None
    problems = integrity_problems(database)
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        report.problems.append(
            f"{METADATA} fails PRAGMA integrity_check: {shown}"
            + (f" (and {more} more)" if more > 0 else "")
            + "; restore it from a backup (or try `sqlite3 metadata.sqlite .recover`)"
        )
        return None
    report.checked.append(f"{METADATA}: PRAGMA integrity_check ok")
    try:
        manifest = read_manifest(directory)
    except IndexDirectoryError as error:
        report.problems.append(str(error))
        return None
    report.checked.append(f"{MANIFEST}: valid (format {manifest.format_version})")
    _check_model_files(directory, manifest, report, read_checkpoint)
    return None if report.problems else manifest


def _check_model_files(
    directory: Path,
    manifest: IndexManifest,
    report: RepairReport,
    read_checkpoint: CheckpointReader | None,
) -> None:
    card = directory / CARD
    if not card.is_file():
        report.problems.append(f"{CARD} is missing")
    elif sha256_of(card) != manifest.card_sha256:
        report.problems.append(f"{CARD} is not the model card recorded in {MANIFEST}")
    else:
        report.checked.append(f"{CARD}: the card recorded in {MANIFEST}")
    checkpoint = directory / CHECKPOINT
    if manifest.checkpoint_sha256 is None:
        report.checked.append(f"{CHECKPOINT}: none recorded (codes only, no model)")
        return
    if not checkpoint.is_file():
        report.problems.append(f"{CHECKPOINT} is missing")
        return
    if sha256_of(checkpoint) != manifest.checkpoint_sha256:
        report.problems.append(f"{CHECKPOINT} is not the checkpoint recorded in {MANIFEST}")
        return
    if read_checkpoint is None:
        report.checked.append(f"{CHECKPOINT}: the checkpoint recorded in {MANIFEST} (SHA-256)")
        return
    try:
        codebooks = np.asarray(read_checkpoint(checkpoint, manifest), dtype=np.float32)
    except Exception as error:  # a checkpoint that will not load is a problem to report
        report.problems.append(f"{CHECKPOINT} does not load: {error}")
        return
    if codebook_fingerprint(codebooks) != manifest.codebook_fingerprint:
        report.problems.append(f"the codebooks of {CHECKPOINT} are not the ones the codes use")
    else:
        report.checked.append(f"{CHECKPOINT}: loads, and its codebooks are the codes' codebooks")
