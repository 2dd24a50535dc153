"""The settings of one `histosearch index` run: one validated model, the source of its options.

`IndexConfig` is the only place an option of `index`, its help and its default are written; the
command generates its options from it (``indexer/cli/options.py``, as `train` does from
`indexer.learn.config.TrainConfig`). Its defaults are the runners' own (`PipelineConfig`,
`TilingConfig`, `SlideConfig`), named, not repeated. Every option reaches every source it is
valid for; one that would be ignored (``--mpp`` for images, ``--ray-actors`` without ``--ray``,
``--tile-size`` for feature vectors) is refused, naming the option and the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexer.index.second_stage import DEFAULT_SHORTLIST_FACTOR, SecondStageSettings
from indexer.index.tiling import DEFAULT_MIN_TISSUE, DEFAULT_TILE_SIZE, TilingConfig
from indexer.ingest.features import DEFAULT_CHUNK_ROWS, FeatureColumns, FeatureOptions
from indexer.ingest.slides import DEFAULT_MPP, SlideConfig
from indexer.ingest.writer import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, PipelineConfig

# Help sections of `histosearch index --help`, in the order they are listed.
ARCHIVE = "archive and index"
TILES = "tiles"
SLIDES = "whole-slide images (--source slides)"
RUN = "encoding"
RAY = "Ray cluster (needs the `ray` extra)"
FEATURES = "feature archives (--source features)"

Source = Literal["auto", "folder", "csv", "bracs", "crc-extended", "bach", "slides", "features"]
# Options that cut or decode pixels, or read them on Ray: meaningless for feature vectors.
PIXEL_OPTIONS = (
    "tile_size",
    "stride",
    "min_tissue",
    "max_image_pixels",
    "mpp",
    "slide_mpp",
    "workers",
    "ray",
    "ray_actors",
)
FEATURE_OPTIONS = (
    "label_column",
    "group_column",
    "slide_column",
    "second_stage",
    "shortlist_factor",
)
DEFAULT_COLUMNS = FeatureColumns()


def _section(name: str, **extra: Any) -> dict[str, Any]:
    return {"cli_group": name, **extra}


class IndexConfig(BaseModel):
    """Every setting of an index run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Field(
        description="archive folder or CSV manifest", json_schema_extra=_section(ARCHIVE)
    )
    index: Path = Field(description="index directory", json_schema_extra=_section(ARCHIVE))
    checkpoint: Path | None = Field(
        default=None,
        description="model checkpoint (required for a new index)",
        json_schema_extra=_section(ARCHIVE),
    )
    source: Source = Field(
        default="auto",
        description="archive layout (auto = csv for a file, folder otherwise); slides: "
        "whole-slide images OpenSlide reads, in a folder or a path,label,group CSV; features: "
        "vectors a foundation model produced (a .npy with a CSV of one line per row, or a "
        "folder of .h5 / .pt files), encoded by a feature model (`histosearch train --source "
        "features`)",
        json_schema_extra=_section(ARCHIVE),
    )
    dataset: str | None = Field(
        default=None,
        description="dataset name stored with each item",
        json_schema_extra=_section(ARCHIVE),
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        description="split a new index into this many shards by group (default: one "
        "unsharded index)",
        json_schema_extra=_section(ARCHIVE),
    )
    tile_size: int = Field(
        default=DEFAULT_TILE_SIZE,
        ge=16,
        description="tile edge in pixels",
        json_schema_extra=_section(TILES),
    )
    stride: int | None = Field(
        default=None,
        gt=0,
        description="tile stride in pixels (default: tile size)",
        json_schema_extra=_section(TILES),
    )
    min_tissue: float = Field(
        default=DEFAULT_MIN_TISSUE,
        ge=0.0,
        le=1.0,
        description="tissue share a tile needs (0-1)",
        json_schema_extra=_section(TILES),
    )
    max_image_pixels: int | None = Field(
        default=None,
        gt=0,
        description="largest image to decode, in pixels (default: 1e9; the archive is trusted)",
        json_schema_extra=_section(TILES),
    )
    mpp: float = Field(
        default=DEFAULT_MPP,
        gt=0.0,
        description="micrometres per pixel of the tiles",
        json_schema_extra=_section(SLIDES),
    )
    slide_mpp: float | None = Field(
        default=None,
        gt=0.0,
        description="level-0 micrometres per pixel, for slides that do not record it",
        json_schema_extra=_section(SLIDES),
    )
    label_column: str = Field(
        default=DEFAULT_COLUMNS.label,
        description="CSV column of each row's (or slide's) label",
        json_schema_extra=_section(FEATURES, cli_metavar="COLUMN"),
    )
    group_column: str = Field(
        default=DEFAULT_COLUMNS.group,
        description="CSV column of each row's group (the patient), never on both sides of a "
        "fair evaluation",
        json_schema_extra=_section(FEATURES, cli_metavar="COLUMN"),
    )
    slide_column: str = Field(
        default=DEFAULT_COLUMNS.slide_id,
        description="CSV column of each row's slide id",
        json_schema_extra=_section(FEATURES, cli_metavar="COLUMN"),
    )
    second_stage: Literal["sq8"] | None = Field(
        default=None,
        description="a new index re-ranks its codes' shortlist by 8-bit codes of each row, kept "
        "on disk (sq8: one byte per number of the row); chosen when the index is created",
        json_schema_extra=_section(FEATURES),
    )
    shortlist_factor: int | None = Field(
        default=None,
        ge=1,
        description="with --second-stage: the shortlist re-ranked is this many times k "
        f"(default {DEFAULT_SHORTLIST_FACTOR})",
        json_schema_extra=_section(FEATURES, cli_metavar="N"),
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        description="tiles per forward pass and per write (feature rows: rows per read, "
        f"default {DEFAULT_CHUNK_ROWS})",
        json_schema_extra=_section(RUN),
    )
    workers: int = Field(
        default=DEFAULT_WORKERS,
        description="threads reading and decoding",
        json_schema_extra=_section(RUN),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where the model runs (auto: CUDA when available)",
        json_schema_extra=_section(RUN),
    )
    progress: bool = Field(
        default=True, description="progress bars", json_schema_extra=_section(RUN)
    )
    ray: str | None = Field(
        default=None,
        description="encode on a Ray cluster: auto (RAY_ADDRESS, a running local one, or a new "
        "local one) or its address (default: this process)",
        json_schema_extra=_section(RAY, cli_metavar="auto|ADDRESS"),
    )
    ray_actors: int | None = Field(
        default=None,
        ge=1,
        description="embedding actors (default: one per GPU, else CPUs / 4)",
        json_schema_extra=_section(RAY, cli_metavar="N"),
    )

    @property
    def slides(self) -> bool:
        return self.source == "slides"

    @property
    def features(self) -> bool:
        return self.source == "features"

    @model_validator(mode="after")
    def _every_option_reaches_its_source(self) -> IndexConfig:
        given = self.model_fields_set
        if self.features:
            return self._only_feature_options(given)
        refused = [
            f"--{name.replace('_', '-')} applies to --source features only"
            for name in FEATURE_OPTIONS
            if name in given
        ]
        if not self.slides:
            refused += [
                f"--{name.replace('_', '-')} applies to --source slides only"
                for name in ("mpp", "slide_mpp")
                if name in given
            ]
        else:
            if "max_image_pixels" in given:
                refused.append(
                    "--max-image-pixels bounds decoded images; slides are read by OpenSlide "
                    "tile by tile (--source slides)"
                )
        if self.ray is None and "ray_actors" in given:
            refused.append("--ray-actors needs --ray")
        if self.ray is not None and not self.slides and "workers" in given:
            refused.append(
                "--workers sets this process's reading threads; with --ray, images are read "
                "by Ray tasks"
            )
        if self.ray is not None and "device" in given:
            refused.append(
                "--device picks this process's device; with --ray the cluster's actors run the "
                "model (a GPU each where the cluster has GPUs)"
            )
        if refused:
            raise ValueError("; ".join(refused))
        return self

    def _only_feature_options(self, given: set[str]) -> IndexConfig:
        refused = [
            f"--{name.replace('_', '-')} does not apply to --source features: feature vectors "
            "are neither cut, decoded nor read on Ray"
            for name in PIXEL_OPTIONS
            if name in given
        ]
        if self.shortlist_factor is not None and self.second_stage is None:
            refused.append("--shortlist-factor needs --second-stage")
        if refused:
            raise ValueError("; ".join(refused))
        return self

    def feature_options(self, dim: int) -> FeatureOptions:
        """How to read a feature archive for a model of ``dim``-long input vectors."""
        return FeatureOptions(
            columns=FeatureColumns(self.slide_column, self.label_column, self.group_column),
            dim=dim,
            dataset=self.dataset,
            chunk_rows=self._feature_rows(),
        )

    def second_stage_settings(self) -> SecondStageSettings | None:
        """The second stage a new index is created with (None: the compact codes alone)."""
        if self.second_stage is None:
            return None
        return SecondStageSettings(self.second_stage, self.shortlist_factor)

    def feature_pipeline(self) -> PipelineConfig:
        """The writer's settings for feature rows: a read chunk is one write."""
        return PipelineConfig(batch_size=self._feature_rows(), progress=self.progress)

    def _feature_rows(self) -> int:
        # --batch-size's default counts images; rows are ~1000x cheaper to encode.
        return self.batch_size if "batch_size" in self.model_fields_set else DEFAULT_CHUNK_ROWS

    def tiling(self) -> TilingConfig:
        return TilingConfig(self.tile_size, self.stride, self.min_tissue)

    def pipeline(self) -> PipelineConfig:
        """The run's settings for images."""
        return PipelineConfig(
            tiling=self.tiling(),
            batch_size=self.batch_size,
            workers=self.workers,
            progress=self.progress,
        )

    def slide_config(self) -> SlideConfig:
        """The run's settings for slides."""
        return SlideConfig(
            tiling=self.tiling(),
            batch_size=self.batch_size,
            workers=self.workers,
            progress=self.progress,
            mpp=self.mpp,
            slide_mpp=self.slide_mpp,
        )
