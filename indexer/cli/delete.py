"""`histosearch delete`: remove items from an index by id."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "delete", help="remove items by id", description="Remove items (ids from search or stats)."
    )
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument("ids", type=int, nargs="+", metavar="ID", help="item ids to remove")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from indexer.index.shards import open_index_directory
    from indexer.index.store import IndexDirectoryError

    try:
        index = open_index_directory(args.index)
    except IndexDirectoryError as error:
        log.error("%s", error)
        return 2
    with index:
        removed = index.remove(args.ids)
    missing = len(set(args.ids)) - removed
    print(
        f"removed {removed} item(s)"
        + (f"; {missing} id(s) were not in the index" if missing else "")
    )
    return 0
