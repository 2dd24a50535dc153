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

from indexer.index.store import ArchiveIndex, IndexDirectoryError
from indexer.ingest.pipeline import (
    TRUSTED_ARCHIVE_MAX_PIXELS,
    IndexingSummary,
    PipelineConfig,
    index_archive,
    model_encoder,
)
from indexer.ingest.sources import load_source
from indexer.ingest.tiling import DEFAULT_TILE_SIZE, TilingConfig
from indexer.learn.config import TrainConfig
from indexer.learn.training import train
from model import load_checkpoint, select_device

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    """Where the archive is, where the model and index go, and how long training may take."""

    archive: Path
    workdir: Path
    index_dir: Path
    train_minutes: float = 5.0
    train_epochs: int = 300
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
        "no model in %s: training on %s for at most %.1f minutes",
        config.checkpoint.parent,
        config.archive,
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
    """Create the index on first use, then encode whatever the archive holds that it lacks."""
    images = load_source("auto", config.archive, config.dataset)
    # The archive is the operator's own data: large slides are expected, not an attack.
    Image.MAX_IMAGE_PIXELS = TRUSTED_ARCHIVE_MAX_PIXELS
    index = _open_or_create(config.index_dir, checkpoint)
    try:
        device = select_device(config.device)
        model = load_checkpoint(checkpoint, map_location=device)
        pipeline = PipelineConfig(tiling=TilingConfig(tile_size=config.tile_size))
        return index_archive(images, index, model_encoder(model, device), pipeline)
    finally:
        index.close()


def _open_or_create(directory: Path, checkpoint: Path) -> ArchiveIndex:
    if not (directory / "manifest.json").exists():
        return ArchiveIndex.create(directory, checkpoint)
    index = ArchiveIndex.open(directory)
    existing = index.checkpoint_path
    if existing is None or existing.read_bytes() != checkpoint.read_bytes():
        index.close()
        raise IndexDirectoryError(
            f"{directory} was built with another model than {checkpoint}: "
            "delete the index directory (or choose another) to rebuild it with this model"
        )
    return index


def prepare(config: PrepareConfig) -> IndexingSummary:
    """Model, then index; returns what indexing did."""
    checkpoint = ensure_model(config)
    summary = ensure_index(config, checkpoint)
    for line in summary.lines():
        log.info("index %s: %s", config.index_dir, line)
    return summary
