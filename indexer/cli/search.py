"""`histosearch search`: the most similar indexed items to a query image."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from indexer.cli.slide_queries import (
    add_slide_search_arguments,
    run_slide_search,
    slide_search_asked,
)

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="rank indexed items by similarity to a query image",
        description="Embed IMAGE with the index's own model and print the best hits.",
    )
    parser.add_argument(
        "image", type=Path, nargs="?", help="query image (PNG, JPEG, TIFF ...); or --slide/--group"
    )
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument("-k", type=int, default=10, help="number of hits (default: 10)")
    parser.add_argument("--label", help="only items with this label")
    parser.add_argument("--dataset", help="only items from this dataset")
    parser.add_argument("--exclude-group", help="leave out items of this group (patient, slide)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (default: auto, CUDA when available)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_slide_search_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from indexer.index.opening import open_index
    from indexer.index.store import IndexDirectoryError, SearchFilters
    from model import CheckpointMismatchError, select_device
    from model.preprocess import open_upright_rgb

    if slide_search_asked(args):
        return run_slide_search(args)
    if args.image is None:
        log.error("a query IMAGE is required (or --slide ID / --group ID)")
        return 2
    if args.k < 1:
        log.error("-k must be at least 1")
        return 2
    try:
        # The same decode rule the indexer and the service apply, so scores agree with theirs.
        query = open_upright_rgb(args.image)
        opened = open_index(args.index, select_device(args.device))
    except (OSError, ValueError, IndexDirectoryError, CheckpointMismatchError) as error:
        # OSError covers unreadable files (UnidentifiedImageError); ValueError pixels with no
        # RGB meaning (UnsupportedPixelsError).
        log.error("%s", error)
        return 2
    with opened:
        descriptor = opened.embedder().embed([query])
        filters = SearchFilters(args.label, args.dataset, args.exclude_group)
        hits = opened.index.search(descriptor, args.k, filters)[0]
    if args.json:
        rows = [_hit_json(rank, hit) for rank, hit in enumerate(hits, start=1)]
        print(json.dumps({"query": str(args.image), "hits": rows}, indent=2))
        return 0
    print(
        f"{'rank':>4}  {'score':>7}  {'id':>7}  {'label':<14} {'group':<18} source (tile x,y,w,h)"
    )
    for rank, hit in enumerate(hits, start=1):
        record = hit.record
        if record is None:
            continue
        tile = "" if record.tile is None else " ({},{},{},{})".format(*record.tile)
        print(
            f"{rank:>4}  {hit.score:7.4f}  {hit.id:>7}  {record.label or '-':<14} "
            f"{record.group or '-':<18} {record.source}{tile}"
        )
    return 0


def _hit_json(rank: int, hit: Any) -> dict[str, Any]:
    record = {} if hit.record is None else asdict(hit.record)
    record.pop("thumbnail", None)
    return {"rank": rank, "score": hit.score, **record, "id": hit.id}
