"""`histosearch search`: the most similar indexed items to a query image, to query vectors of a
feature index's foundation model (one JSON vector or the rows of an ``.npy``), or to an item
already indexed."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.index.opening import OpenedIndex

from indexer.cli.slide_queries import (
    add_slide_search_arguments,
    run_slide_search,
    slide_search_asked,
)

log = logging.getLogger(__name__)


DESCRIPTION = """\
Print the best hits of a query against an index. An image index embeds IMAGE with its own
model. A feature index (built with --source features) takes vectors of the foundation model
that made it: --vector '[0.1, ...]' (one JSON array) or --vectors q.npy (one row or a matrix
of rows; one answer per row); their length must be the model's input length. --item ID queries
with an indexed item's stored code (decoded to its codewords: the float vector is not kept).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="rank indexed items by similarity to a query image, vectors or an indexed item",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "image", type=Path, nargs="?", help="query image (PNG, JPEG, TIFF ...), image indexes"
    )
    parser.add_argument(
        "--vector", metavar="JSON", help="one query vector as a JSON array (feature indexes)"
    )
    parser.add_argument(
        "--vectors", type=Path, metavar="NPY", help="query rows in an .npy file (feature indexes)"
    )
    parser.add_argument("--item", type=int, metavar="ID", help="query with an indexed item")
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
    from indexer.index.errors import IndexInputError
    from indexer.index.opening import open_index
    from indexer.index.store import IndexDirectoryError, SearchFilters
    from model import CheckpointMismatchError, select_device
    from model.preprocess import open_upright_rgb

    if slide_search_asked(args):
        return run_slide_search(args)
    given = [
        name for name in ("image", "vector", "vectors", "item") if getattr(args, name) is not None
    ]
    if len(given) != 1:
        log.error("give one query: an image, --vector, --vectors, --item, --slide or --group")
        return 2
    if args.k < 1:
        log.error("-k must be at least 1")
        return 2
    try:
        # The same decode rule the indexer and the service apply, so scores agree with theirs.
        image = open_upright_rgb(args.image) if args.image is not None else None
        opened = open_index(args.index, select_device(args.device))
    except (OSError, ValueError, IndexDirectoryError, CheckpointMismatchError) as error:
        # OSError covers unreadable files (UnidentifiedImageError); ValueError pixels with no
        # RGB meaning (UnsupportedPixelsError).
        log.error("%s", error)
        return 2
    with opened:
        try:
            fine = None
            if image is not None:
                descriptors, names = opened.embedder().embed([image]), [str(args.image)]
            else:
                descriptors, names, fine = _query_descriptors(args, opened)
        except (IndexInputError, IndexDirectoryError, OSError) as error:
            log.error("%s", error)
            return 2
        filters = SearchFilters(args.label, args.dataset, args.exclude_group)
        answers = opened.index.search(descriptors, args.k, filters, fine_queries=fine)
    if args.json:
        rows = [
            {"query": name, "hits": [_hit_json(rank, hit) for rank, hit in enumerate(hits, 1)]}
            for name, hits in zip(names, answers, strict=True)
        ]
        print(json.dumps(rows[0] if args.image is not None else rows, indent=2))
        return 0
    for name, hits in zip(names, answers, strict=True):
        if len(names) > 1 or args.image is None:
            print(f"query {name}")
        _print_table(hits, features=opened.is_feature_index)
    return 0


def _query_descriptors(args: argparse.Namespace, opened: OpenedIndex) -> tuple[Any, list[str], Any]:
    """Descriptors of --vector / --vectors (checked against the model's input length) or of
    --item's stored code, with a name per query row, and the second stage's queries (None for
    an index without one)."""
    from indexer.index.errors import IndexInputError
    from indexer.index.query_vectors import vector_from_json, vectors_from_npy

    if args.item is not None:
        fine = opened.fine_query_of_item(args.item)
        return _item_descriptor(opened, args.item), [f"item {args.item}"], fine
    encoder = opened.feature_encoder()
    if args.vector is not None:
        rows = vector_from_json(args.vector, encoder.input_dim)
        return encoder.descriptors(rows), ["vector"], opened.fine_queries(rows)
    try:
        data = Path(args.vectors).read_bytes()
    except OSError as error:
        raise IndexInputError(f"{args.vectors}: cannot read ({error})") from None
    rows = vectors_from_npy(data, encoder.input_dim)
    names = [f"row {row}" for row in range(len(rows))]
    return encoder.descriptors(rows), names, opened.fine_queries(rows)


def _item_descriptor(opened: OpenedIndex, item_id: int) -> Any:
    """The item's stored code decoded to its codewords, as a (1, M*d) query."""
    import torch

    from indexer.index.errors import IndexInputError
    from indexer.index.shards import ShardedIndex
    from indexer.index.store import ArchiveIndex

    index = opened.index
    parts = index.shards if isinstance(index, ShardedIndex) else [index]
    for part in parts:
        if isinstance(part, ArchiveIndex) and part.get(item_id) is not None:
            codes = torch.from_numpy(part.codes_of([item_id]).astype("int64"))
            with torch.inference_mode():
                return opened.model.decode(codes.to(opened.device)).float().cpu().numpy()
    raise IndexInputError(f"no item {item_id} in {index.directory}")


def _print_table(hits: list[Any], features: bool) -> None:
    if features:
        print(f"{'rank':>4}  {'score':>7}  {'id':>7}  {'label':<14} {'group':<18} slide (row)")
    else:
        print(
            f"{'rank':>4}  {'score':>7}  {'id':>7}  {'label':<14} {'group':<18} "
            "source (tile x,y,w,h)"
        )
    for rank, hit in enumerate(hits, start=1):
        record = hit.record
        if record is None:
            continue
        if features:
            place = (
                f"{record.extra.get('slide_id', record.source)} ({record.extra.get('row', '-')})"
            )
        else:
            tile = "" if record.tile is None else " ({},{},{},{})".format(*record.tile)
            place = f"{record.source}{tile}"
        print(
            f"{rank:>4}  {hit.score:7.4f}  {hit.id:>7}  {record.label or '-':<14} "
            f"{record.group or '-':<18} {place}"
        )


def _hit_json(rank: int, hit: Any) -> dict[str, Any]:
    record = {} if hit.record is None else asdict(hit.record)
    record.pop("thumbnail", None)
    return {"rank": rank, "score": hit.score, **record, "id": hit.id}
