"""`histosearch index`: build or extend an index directory from an archive of images."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from indexer.ingest.tiling import DEFAULT_TILE_SIZE

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "index",
        help="encode an archive into an index directory (creates it or extends it)",
        description=(
            "Encode every image of an archive with an SPQ model and add it to an index directory. "
            "Large images are cut into tiles; background tiles are skipped. Re-running resumes: "
            "images finished by an earlier run are not encoded again."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="archive folder or CSV manifest")
    parser.add_argument("--index", type=Path, required=True, help="index directory")
    parser.add_argument(
        "--checkpoint", type=Path, help="model checkpoint (required for a new index)"
    )
    parser.add_argument(
        "--source",
        default="auto",
        choices=["auto", "folder", "csv", "bracs", "crc-extended", "bach", "slides"],
        help="archive layout (default: auto = csv for a file, folder otherwise); slides: "
        "whole-slide images OpenSlide reads, in a folder or a path,label,group CSV",
    )
    parser.add_argument(
        "--mpp", type=float, default=0.5, help="slides: micrometres per pixel of the tiles"
    )
    parser.add_argument(
        "--slide-mpp",
        type=float,
        help="slides: level-0 micrometres per pixel, for slides that do not record it",
    )
    parser.add_argument("--dataset", help="dataset name stored with each item")
    parser.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help=f"tile edge in pixels (default: {DEFAULT_TILE_SIZE})",
    )
    parser.add_argument("--stride", type=int, help="tile stride in pixels (default: tile size)")
    parser.add_argument(
        "--min-tissue", type=float, default=0.25, help="tissue share a tile needs (0-1)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="threads reading and decoding")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (default: auto, CUDA when available)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="largest image to decode, in pixels (default: 1e9; the archive is trusted)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        help="split a new index into this many shards by group (default: one unsharded index)",
    )
    parser.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="encode on a Ray cluster: auto (RAY_ADDRESS, a running local one, or a new local "
        "one) or its address; needs the `ray` extra (default: this process)",
    )
    parser.add_argument(
        "--ray-actors", type=int, help="embedding actors (default: one per GPU, else CPUs / 4)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from indexer.index.opening import open_or_create_index
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.archive_root import archive_folder
    from indexer.ingest.pipeline import TRUSTED_ARCHIVE_MAX_PIXELS, PipelineConfig, index_archive
    from indexer.ingest.sources import SourceError, load_source
    from indexer.ingest.tiling import TilingConfig
    from model import CheckpointMismatchError, select_device
    from model.errors import HistosearchError

    # The archive is the user's own: lift PIL's bomb guard (89 Mpx) to a deliberate bound.
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels or TRUSTED_ARCHIVE_MAX_PIXELS
    if args.source == "slides":
        from indexer.cli.index_slides import run_slides

        return run_slides(args)
    try:
        images = load_source(args.source, args.data, args.dataset)
        device = select_device(args.device)
        opened = open_or_create_index(args.index, args.checkpoint, device, args.shards)
    except (SourceError, IndexDirectoryError, CheckpointMismatchError, ValueError) as error:
        log.error("%s", error)
        return 2
    with opened:
        config = PipelineConfig(
            tiling=TilingConfig(args.tile_size, args.stride, args.min_tissue),
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
        embedder = opened.embedder(args.batch_size)
        # Sources are stored relative to the archive folder (a CSV's own folder), by its name.
        root = archive_folder(args.data)
        if args.ray:
            try:
                summary = _encode_on_ray(images, opened.index, config, root, args)
            except HistosearchError as error:
                log.error("%s", error)
                return 2
        else:
            summary = index_archive(images, opened.index, embedder, config, root)
    print(f"index {args.index}: {len(images)} images in the archive")
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0


def _encode_on_ray(
    images: Any, index: Any, config: Any, root: Path, args: argparse.Namespace
) -> Any:
    """The same run on a Ray cluster (`indexer.ingest.distributed`)."""
    from model.errors import HistosearchError

    try:
        import ray  # noqa: F401

        from indexer.ingest.distributed import RayEncodingConfig, encode_archive_on_ray
    except ImportError as error:
        raise HistosearchError(
            f"--ray needs the `ray` extra (pip install '.[ray]'): {error}"
        ) from error
    ray_config = RayEncodingConfig(args.ray, args.ray_actors)
    return encode_archive_on_ray(
        images, index, index.checkpoint_path, config, ray_config, archive_root=root
    )
