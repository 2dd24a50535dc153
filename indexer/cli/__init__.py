"""The `histosearch` console script.

Every module in this package that defines ``register(subparsers)`` contributes one sub-command,
so a new verb is a new file and nothing else changes. Modules import their heavy dependencies
(torch, faiss) inside their handlers so that ``histosearch --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
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


def _command_modules() -> list[str]:
    return sorted(
        f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    )


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
    for module_name in _command_modules():
        module = importlib.import_module(module_name)
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
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
