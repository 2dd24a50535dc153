"""`histosearch stats`: what an index directory holds."""

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
        "stats", help="describe an index directory", description="Counts, code geometry, model."
    )
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from indexer.index.shards import ShardedIndex, open_index_directory
    from indexer.index.store import IndexDirectoryError

    try:
        index = open_index_directory(args.index)
    except IndexDirectoryError as error:
        log.error("%s", error)
        return 2
    with index:
        stats = index.stats()
        shards = index.shard_stats() if isinstance(index, ShardedIndex) else []
    if args.json:
        print(
            json.dumps(
                {**asdict(stats), "shards": [asdict(s) for s in shards]}, indent=2, default=str
            )
        )
        return 0
    bits = stats.num_codebooks * (stats.codebook_size.bit_length() - 1)
    print(f"index:      {stats.directory}")
    print(f"items:      {stats.items}")
    print(
        f"codes:      M={stats.num_codebooks} K={stats.codebook_size} d={stats.codeword_dim} "
        f"({bits} bits, {stats.code_bytes} bytes per item)"
    )
    print(f"memory:     {stats.memory_bytes / 1e6:.2f} MB in the searchable table")
    stage = stats.second_stage
    if stage is not None:
        print(
            f"re-rank:    {stage['kind']} of {stage['dim']}-d vectors ({stage['code_bytes']} "
            f"bytes per item on disk, memory-mapped), shortlist {stage['shortlist_factor']} x k"
        )
    print(
        f"model:      {stats.card.get('backbone', '?')}, "
        f"codebooks {stats.codebook_fingerprint[:16]}"
    )
    print(f"unsaved:    {stats.unsaved_changes} changes newer than the snapshot")
    if shards:
        print(f"shards:     {len(shards)}")
        for shard in shards:
            print(f"  {Path(shard.directory).name:<24} {shard.items} items")
    for title, counts in (("labels", stats.labels), ("datasets", stats.datasets)):
        print(f"{title}:")
        for name, count in counts.items():
            print(f"  {name or '(none)':<24} {count}")
    return 0
