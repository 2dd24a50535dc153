"""`histosearch repair`: check an index directory and rebuild its FAISS snapshot from SQLite."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from indexer.index.manifest import IndexManifest

log = logging.getLogger(__name__)

DESCRIPTION = """\
Check an index directory and rebuild its FAISS snapshot from its SQLite metadata.

metadata.sqlite is the source of truth: every item row holds its code. This command
  1. runs SQLite's PRAGMA integrity_check on metadata.sqlite,
  2. validates manifest.json and checks that model_card.json and model.pt are the files it
     recorded (SHA-256), loads model.pt and checks that its codebooks are the codes' codebooks,
  3. rebuilds codes.<gen>.faiss and columns.<gen>.npz from every SQLite row, commits them in
     manifest.json and removes older snapshot files,
and reports what it found and did. Nothing is rebuilt when step 1 or 2 finds a problem: a
damaged database must be restored from a backup, and codes must never be paired with another
model. Exit status 0 when the index was rebuilt, 2 when something could not be repaired.

Opening an index (histosearch serve, search, stats ...) already rebuilds a damaged or stale
snapshot on its own with a warning; it refuses, naming this command, only what SQLite cannot
vouch for.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repair",
        help="check an index directory and rebuild its FAISS snapshot from SQLite",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument(
        "--skip-model-load",
        action="store_true",
        help="check model.pt by its SHA-256 only, without loading it (no torch needed)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from indexer.index.repair import repair_index

    report = repair_index(args.index, None if args.skip_model_load else _checkpoint_codebooks)
    print(f"index {report.directory}")
    for line in report.checked:
        print(f"  checked: {line}")
    for line in report.done:
        print(f"  done:    {line}")
    for line in report.problems:
        print(f"  PROBLEM: {line}")
    print("repaired" if report.repaired else "not repaired: see the problems above")
    return 0 if report.repaired else 2


def _checkpoint_codebooks(path: Path, manifest: IndexManifest) -> npt.NDArray[np.floating]:
    from model import load_checkpoint

    model = load_checkpoint(path)
    codebooks: npt.NDArray[np.floating] = model.codebooks().detach().cpu().numpy()
    return codebooks
