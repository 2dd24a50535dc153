"""`histosearch index --source slides`: encode whole-slide images (see `indexer.ingest.slides`)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_slides(args: argparse.Namespace, open_or_create: Callable[[Path, Path | None], Any]) -> int:
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.slides import SlideConfig, index_slides, load_slides
    from indexer.ingest.sources import SourceError
    from model import Embedder, load_checkpoint, select_device

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
        index = open_or_create(args.index, args.checkpoint)
    except (SourceError, IndexDirectoryError, ValueError) as error:
        log.error("%s", error)
        return 2
    try:
        checkpoint = index.checkpoint_path
        if checkpoint is None:
            log.error("%s has no model.pt to encode with", args.index)
            return 2
        device = select_device(args.device)
        model = load_checkpoint(checkpoint, map_location=device)
        index.check_model(model.codebooks().detach().cpu().numpy())
        embedder = Embedder(model, device, batch_size=args.batch_size)
        summary = index_slides(slides, index, embedder, config)
    finally:
        index.close()
    print(f"index {args.index}: {len(slides)} slides in the archive")
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0
