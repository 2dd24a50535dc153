"""`histosearch search`: the most similar indexed items to a query image."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="rank indexed items by similarity to a query image",
        description="Embed IMAGE with the index's own model and print the best hits.",
    )
    parser.add_argument("image", type=Path, help="query image (PNG, JPEG, TIFF ...)")
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument("-k", type=int, default=10, help="number of hits (default: 10)")
    parser.add_argument("--label", help="only items with this label")
    parser.add_argument("--dataset", help="only items from this dataset")
    parser.add_argument("--exclude-group", help="leave out items of this group (patient, slide)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from indexer.index.shards import open_index
    from indexer.index.store import IndexDirectoryError, SearchFilters
    from indexer.ingest.pipeline import model_encoder
    from model import UnsupportedPixelsError, load_checkpoint, select_device
    from model.preprocess import upright_rgb

    if args.k < 1:
        log.error("-k must be at least 1")
        return 2
    try:
        with Image.open(args.image) as opened:
            # The same conversion the indexer and the service apply, so scores agree with theirs.
            query = upright_rgb(opened)
        index = open_index(args.index)
    except (OSError, UnidentifiedImageError, UnsupportedPixelsError, IndexDirectoryError) as error:
        log.error("%s", error)
        return 2
    with index:
        if index.checkpoint_path is None:
            log.error("%s has no model.pt to embed the query with", args.index)
            return 2
        device = select_device(args.device)
        model = load_checkpoint(index.checkpoint_path, map_location=device)
        descriptor = model_encoder(model, device)([query])
        filters = SearchFilters(args.label, args.dataset, args.exclude_group)
        hits = index.search(descriptor, args.k, filters)[0]
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
