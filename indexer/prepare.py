"""Bring an archive to a searchable state: a model (trained if none exists) and an index of it.

This is the job of `histosearch prepare`, of `histosearch demo` (before it serves) and of the
compose file's indexer service. Every step is reused when its output already exists, so running it
again is cheap: it trains only when ``<workdir>/model/model.pt`` is missing, and it encodes only the
images the index has not finished (the index journals finished images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from indexer.index.opening import open_or_create_index
from indexer.index.tiling import DEFAULT_TILE_SIZE, TilingConfig
from indexer.ingest.archive_root import archive_folder
from indexer.ingest.pipeline import (
    TRUSTED_ARCHIVE_MAX_PIXELS,
    IndexingSummary,
    PipelineConfig,
    index_archive,
)
from indexer.ingest.sources import load_source
from indexer.learn.config import PREPARE_EPOCHS, PREPARE_MINUTES, TrainConfig
from indexer.learn.training import train
from model import select_device

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    """Where the archive is, where the model and index go, and how long training may take."""

    archive: Path
    workdir: Path
    index_dir: Path
    train_minutes: float = PREPARE_MINUTES
    train_epochs: int = PREPARE_EPOCHS
    device: str = "auto"
    tile_size: int = DEFAULT_TILE_SIZE
    dataset: str | None = None

    @property
    def checkpoint(self) -> Path:
        return self.workdir / MODEL_SUBDIR / "model.pt"


def ensure_model(config: PrepareConfig) -> Path:
    """The checkpoint to index with: reused when present, else trained on the archive (labels are
    never used for training; labelled held-out groups only choose the checkpoint)."""
    if config.checkpoint.exists():
        log.info("reusing model %s", config.checkpoint)
        return config.checkpoint
    log.info(
        "no model in %s: training on %s for %d epochs, at most %.1f minutes",
        config.checkpoint.parent,
        config.archive,
        config.train_epochs,
        config.train_minutes,
    )
    train_config = TrainConfig(
        data=str(config.archive),
        out=str(config.checkpoint.parent),
        minutes=config.train_minutes,
        epochs=config.train_epochs,
        device=config.device,
    )
    return train(train_config, resume=True)


def ensure_index(config: PrepareConfig, checkpoint: Path) -> IndexingSummary:
    """Create the index on first use, then encode whatever the archive holds that it lacks.

    An existing index built with another model is refused (`IndexDirectoryError`); one whose
    model disagrees with its card or codebooks too (see `indexer.index.opening`).
    """
    images = load_source("auto", config.archive, config.dataset)
    # The archive is the operator's own data: large slides are expected, not an attack.
    Image.MAX_IMAGE_PIXELS = TRUSTED_ARCHIVE_MAX_PIXELS
    device = select_device(config.device)
    with open_or_create_index(config.index_dir, checkpoint, device) as opened:
        pipeline = PipelineConfig(tiling=TilingConfig(tile_size=config.tile_size))
        embedder = opened.embedder(pipeline.batch_size)
        return index_archive(
            images, opened.index, embedder, pipeline, archive_folder(config.archive)
        )


def prepare(config: PrepareConfig) -> IndexingSummary:
    """Model, then index; returns what indexing did."""
    checkpoint = ensure_model(config)
    summary = ensure_index(config, checkpoint)
    for line in summary.lines():
        log.info("index %s: %s", config.index_dir, line)
    return summary
