"""`histosearch index`: build or extend an index directory from an archive of images or slides.

Every option is a field of `indexer.ingest.config.IndexConfig`, which holds its default and
refuses an option the chosen source would ignore. Every source goes through the same steps:
open (or create, sharded with ``--shards``) the index, choose the encoder (this process's model,
or with ``--ray`` a Ray cluster's), run the source's runner, print the summary.
"""

from __future__ import annotations

import argparse
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from indexer.cli.options import add_model_options, model_options, validated_model
from indexer.ingest.config import IndexConfig

if TYPE_CHECKING:
    from indexer.index.opening import OpenedIndex
    from indexer.ingest.sources import ArchiveImage
    from indexer.ingest.writer import IndexingSummary

log = logging.getLogger(__name__)

DESCRIPTION = """\
Encode every image of an archive with an SPQ model and add it to an index directory. Large
images are cut into tiles; background tiles are skipped. Re-running resumes: images finished by
an earlier run are not encoded again. With --source slides, whole-slide images are cut into
tiles at a physical resolution (--mpp), tissue first. With --source features, the vectors a
foundation model already produced (a .npy with its CSV, or a folder of .h5 / .pt files) are
encoded by a feature model (--checkpoint from `histosearch train --source features`); a file of
another dimension than the model reads is refused by name and the rest indexed.

Every option below is a field of the index config (indexer/ingest/config.py), which holds its
default and validates it.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "index",
        help="encode an archive into an index directory (creates it or extends it)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, IndexConfig)
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> IndexConfig:
    """The validated run settings; options not given take IndexConfig's defaults."""
    return validated_model(IndexConfig, args, model_options(IndexConfig))


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        log.error("%s", error)
        return 2
    if config.features:
        return run_features(config)
    return _run_images(config)


def run_features(config: IndexConfig) -> int:
    """Index a feature archive with the index's feature model; prints the summary."""
    from indexer.index.opening import open_or_create_index
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.feature_index import index_feature_archive
    from indexer.ingest.features import FeatureArchive
    from indexer.ingest.sources import SourceError
    from model import CheckpointMismatchError, select_device
    from model.errors import HistosearchError

    try:
        device = select_device(config.device)
        opened = open_or_create_index(
            config.index,
            config.checkpoint,
            device,
            config.shards,
            config.second_stage_settings(),
        )
    except (SourceError, IndexDirectoryError, CheckpointMismatchError, ValueError) as error:
        log.error("%s", error)
        return 2
    with opened:
        try:
            encoder = opened.feature_encoder()
            archive = FeatureArchive.open(config.data, config.feature_options(encoder.input_dim))
            summary = index_feature_archive(
                archive, opened.index, encoder, config.feature_pipeline()
            )
        except HistosearchError as error:
            log.error("%s", error)
            return 2
    print(
        f"index {config.index}: {archive.layout} feature archive {config.data}, "
        f"{encoder.input_dim}-d vectors of {encoder.card.feature_model or 'a feature model'}"
    )
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.counts.unreadable:
        print(f"  refused: {path}: {reason}")
    return 0


def _run_images(config: IndexConfig) -> int:
    from PIL import Image

    from indexer.index.opening import open_or_create_index
    from indexer.index.store import IndexDirectoryError
    from indexer.ingest.pipeline import TRUSTED_ARCHIVE_MAX_PIXELS
    from indexer.ingest.sources import SourceError
    from model import CheckpointMismatchError, select_device
    from model.errors import HistosearchError

    try:
        # The archive is the user's own: lift PIL's bomb guard (89 Mpx) to a deliberate bound.
        Image.MAX_IMAGE_PIXELS = config.max_image_pixels or TRUSTED_ARCHIVE_MAX_PIXELS
        images = _archive(config)
        device = select_device(config.device)
        opened = open_or_create_index(config.index, config.checkpoint, device, config.shards)
    except (SourceError, IndexDirectoryError, CheckpointMismatchError, ValueError) as error:
        log.error("%s", error)
        return 2
    with opened:
        try:
            summary = _encode(images, opened, config)
        except HistosearchError as error:
            log.error("%s", error)
            return 2
    kind = "slides" if config.slides else "images"
    print(f"index {config.index}: {len(images)} {kind} in the archive")
    for line in summary.lines():
        print(f"  {line}")
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0


def _archive(config: IndexConfig) -> list[ArchiveImage]:
    from indexer.ingest.slides import load_slides
    from indexer.ingest.sources import load_source

    if config.slides:
        return load_slides(config.data, config.dataset)
    return load_source(config.source, config.data, config.dataset)


def _encode(
    images: list[ArchiveImage], opened: OpenedIndex, config: IndexConfig
) -> IndexingSummary:
    """The source's runner with this process's model, or with the Ray cluster's."""
    from indexer.ingest.archive_root import archive_folder
    from indexer.ingest.pipeline import index_archive
    from indexer.ingest.slides import index_slides

    # Sources are stored relative to the archive folder (a CSV's own folder), by its name.
    root = archive_folder(config.data)
    checkpoint = opened.index.checkpoint_path
    if config.ray is not None:
        distributed = _distributed()
        ray_config = distributed.RayEncodingConfig(config.ray, config.ray_actors)
        assert checkpoint is not None  # `open_or_create_index` checked the model is there
        if not config.slides:
            summary: IndexingSummary = distributed.encode_archive_on_ray(
                images, opened.index, checkpoint, config.pipeline(), ray_config, root
            )
            return summary
        # Slides are read here, tile by tile, and embedded by the cluster's model actors.
        encoder = distributed.ray_encoder(checkpoint, ray_config)
        return index_slides(images, opened.index, encoder, config.slide_config(), root)
    embedder = opened.embedder(config.batch_size)
    if config.slides:
        return index_slides(images, opened.index, embedder, config.slide_config(), root)
    return index_archive(images, opened.index, embedder, config.pipeline(), root)


def _distributed() -> ModuleType:
    """`indexer.ingest.distributed`, or an error naming the `ray` extra it needs."""
    from model.errors import HistosearchError

    try:
        import ray  # noqa: F401

        from indexer.ingest import distributed
    except ImportError as error:
        raise HistosearchError(
            f"--ray needs the `ray` extra (pip install '.[ray]'): {error}"
        ) from error
    return distributed
