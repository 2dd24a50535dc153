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
        choices=["auto", "folder", "csv", "bracs", "crc-extended", "bach"],
        help="archive layout (default: auto = csv for a file, folder otherwise)",
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
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
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

    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.pipeline import (
        TRUSTED_ARCHIVE_MAX_PIXELS,
        PipelineConfig,
        index_archive,
        model_encoder,
    )
    from indexer.ingest.sources import SourceError, load_source
    from indexer.ingest.tiling import TilingConfig
    from model import load_checkpoint, select_device
    from model.errors import HistosearchError

    # The archive is the user's own: lift PIL's bomb guard (89 Mpx) to a deliberate bound.
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels or TRUSTED_ARCHIVE_MAX_PIXELS
    try:
        images = load_source(args.source, args.data, args.dataset)
        index = _open_or_create(args.index, args.checkpoint, args.shards)
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
        config = PipelineConfig(
            tiling=TilingConfig(args.tile_size, args.stride, args.min_tissue),
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
        if args.ray:
            summary = _encode_on_ray(images, index, checkpoint, config, args)
        else:
            summary = index_archive(images, index, model_encoder(model, device), config)
    except HistosearchError as error:
        log.error("%s", error)
        return 2
    finally:
        index.close()
    print(f"index {args.index}: {len(images)} images in the archive")
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0


def _encode_on_ray(
    images: Any, index: Any, checkpoint: Path, config: Any, args: argparse.Namespace
) -> Any:
    try:
        import ray  # noqa: F401

        from indexer.ingest.distributed import RayEncodingConfig, encode_archive_on_ray
    except ImportError as error:
        from model.errors import HistosearchError

        raise HistosearchError(
            f"--ray needs the `ray` extra (pip install '.[ray]'): {error}"
        ) from error
    ray_config = RayEncodingConfig(args.ray, args.ray_actors)
    return encode_archive_on_ray(images, index, checkpoint, config, ray_config)


def _open_or_create(directory: Path, checkpoint: Path | None, shards: int | None) -> Any:
    from indexer.index.shards import ShardedIndex, is_sharded
    from indexer.index.store import ArchiveIndex, IndexDirectoryError

    sharded = is_sharded(directory)
    if sharded or (directory / "manifest.json").exists():
        index: Any = ShardedIndex.open(directory) if sharded else ArchiveIndex.open(directory)
        held = index.shard_count if sharded else None
        if shards is not None and shards != held:
            index.close()
            raise IndexDirectoryError(
                f"{directory} holds {held or 'an unsharded index'}{' shards' if held else ''}, "
                f"not {shards}; index into a new directory to change that"
            )
        if checkpoint is not None and not _same_checkpoint(index, checkpoint):
            index.close()
            raise IndexDirectoryError(
                f"{directory} was built with another model than {checkpoint}; "
                "index into a new directory"
            )
        return index
    if checkpoint is None:
        raise IndexDirectoryError(f"{directory} is not an index yet: give --checkpoint")
    if shards is not None:
        return ShardedIndex.create(directory, checkpoint, shards)
    return ArchiveIndex.create(directory, checkpoint)


def _same_checkpoint(index: Any, checkpoint: Path) -> bool:
    existing = index.checkpoint_path
    return existing is not None and existing.read_bytes() == checkpoint.read_bytes()
