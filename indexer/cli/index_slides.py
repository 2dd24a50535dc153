"""`histosearch index --source slides`: encode whole-slide images (see `indexer.ingest.slides`)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def run_slides(args: argparse.Namespace) -> int:
    from indexer.index.opening import open_or_create_index
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.archive_root import archive_folder
    from indexer.ingest.slides import SlideConfig, index_slides, load_slides
    from indexer.ingest.sources import SourceError
    from model import CheckpointMismatchError, select_device

    try:
        config = SlideConfig(
            mpp=args.mpp,
            tile_size=args.tile_size,
            stride=args.stride,
            min_tissue=args.min_tissue,
            slide_mpp=args.slide_mpp,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
        slides = load_slides(args.data, args.dataset)
        opened = open_or_create_index(args.index, args.checkpoint, select_device(args.device))
    except (SourceError, IndexDirectoryError, CheckpointMismatchError, ValueError) as error:
        log.error("%s", error)
        return 2
    with opened:
        # Sources are stored relative to the archive folder (a CSV's own folder), by its name.
        embedder = opened.embedder(args.batch_size)
        root = archive_folder(args.data)
        summary = index_slides(slides, opened.index, embedder, config, root)
    print(f"index {args.index}: {len(slides)} slides in the archive")
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0
