"""The `histosearch` console script.

Each verb is a module that defines ``register(subparsers)``. The offline verbs live in this package
and are listed in `OFFLINE_COMMANDS`; other packages add theirs through the ``histosearch.commands``
entry-point group (``pyproject.toml``: ``serve`` comes from ``service.cli``), so the one command
joins them without an import running from ``indexer`` up to ``service``. Modules import their
heavy dependencies (torch, faiss) inside their handlers so that ``histosearch --help`` stays
instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence

DESCRIPTION = """\
histosearch: content-based retrieval for H&E histopathology images.

Typical session:
  histosearch train    --data ARCHIVE --out runs/model      # self-supervised, no labels used
  histosearch evaluate --checkpoint runs/model/model.pt --data ARCHIVE
  histosearch index    --checkpoint runs/model/model.pt --data ARCHIVE --index var/index
  histosearch search   --index var/index query.png
  histosearch serve    --index var/index                    # API + web page on :8000
"""


COMMAND_GROUP = "histosearch.commands"
OFFLINE_COMMANDS = {
    name: f"{__name__}.{name}"
    for name in (
        "backbones",
        "delete",
        "demo",
        "evaluate",
        "index",
        "prepare",
        "repair",
        "search",
        "stats",
        "train",
    )
}


def command_modules() -> dict[str, str]:
    """Verb name -> module path: this package's verbs and the installed entry points, by name."""
    plugged = {
        entry.name: entry.value for entry in importlib.metadata.entry_points(group=COMMAND_GROUP)
    }
    return dict(sorted({**plugged, **OFFLINE_COMMANDS}.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histosearch",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="verbosity of the logs written to stderr (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in command_modules().values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # FAISS reports every CPU-feature probe at INFO; only its warnings help a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
