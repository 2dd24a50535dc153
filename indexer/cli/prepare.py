"""`histosearch prepare`: train a model if none exists, then build or extend the archive's index."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from indexer.index.tiling import DEFAULT_TILE_SIZE
from indexer.learn.config import PREPARE_EPOCHS, PREPARE_MINUTES

log = logging.getLogger(__name__)

DESCRIPTION = """\
Bring an archive to a searchable state in one step (the job of the compose `indexer` service):

  1. model: reuse WORKDIR/model/model.pt, or train one on the archive (self-supervised; labels,
     where present, only choose the checkpoint on held-out groups) for --train-epochs,
     at most --train-minutes;
  2. index: create INDEX with that model, or extend it with the images it has not finished.

Running it again is cheap: nothing finished is trained or encoded twice.
"""


def add_prepare_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The options `prepare` and `demo` share; ``defaults`` fills archive/workdir/index."""
    parser.add_argument(
        "--archive",
        type=Path,
        default=defaults.get("archive"),
        required="archive" not in defaults,
        help="image folder (class sub-folders or labels.csv inside) or CSV manifest",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=defaults.get("workdir"),
        required="workdir" not in defaults,
        help="folder for the trained model (WORKDIR/model)",
    )
    parser.add_argument(
        "--index",
        type=Path,
        default=defaults.get("index"),
        help="index directory (default: WORKDIR/index)",
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=PREPARE_EPOCHS,
        help="epochs of training when no model exists yet (default: %(default)s; on the demo "
        "archive the held-out groups peaked between epochs 20 and 80)",
    )
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=PREPARE_MINUTES,
        help="cap on that training's minutes, for archives too large for its epochs "
        "(default: %(default)s); the learning-rate schedule follows whichever budget ends first",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help="images larger than this are cut into tiles of this edge "
        f"(default: {DEFAULT_TILE_SIZE})",
    )
    parser.add_argument("--dataset", help="dataset name stored with each indexed item")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (default: auto, CUDA when available)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="train a model if needed, then build or extend an index",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_prepare_arguments(parser, {})
    parser.set_defaults(handler=run)


def prepare_from_args(args: argparse.Namespace) -> int:
    """Run `prepare` for parsed arguments; 0 on success, 2 when the inputs are unusable."""
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.sources import SourceError
    from indexer.prepare import PrepareConfig, prepare
    from model import CheckpointMismatchError

    config = PrepareConfig(
        archive=args.archive,
        workdir=args.workdir,
        index_dir=args.index or args.workdir / "index",
        train_minutes=args.train_minutes,
        train_epochs=args.train_epochs,
        device=args.device,
        tile_size=args.tile_size,
        dataset=args.dataset,
    )
    try:
        summary = prepare(config)
    except (SourceError, IndexDirectoryError, CheckpointMismatchError, ValueError) as error:
        log.error("%s", error)
        return 2
    for path, reason in summary.unreadable:
        log.warning("unreadable: %s: %s", path, reason)
    return 0


def run(args: argparse.Namespace) -> int:
    return prepare_from_args(args)
