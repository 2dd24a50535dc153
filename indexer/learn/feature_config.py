"""The settings of SPQ training on feature vectors, and of one `histosearch train --source
features` run: validated models, the source of that command's options.

`FeatureTrainConfig` is what `indexer.learn.feature_training.train_on_features` reads;
`FeatureRunConfig` adds the archive, its columns, the patient split and the run folder. Both
import neither torch nor FAISS, so that ``histosearch --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.card import code_geometry

# Help sections of `histosearch train --help` for --source features.
FEATURE_DATA = "feature archive and split (--source features)"
FEATURE_MODEL = "feature model and training (--source features)"

Signal = Literal["neighbours", "slide", "views", "slide+neighbours"]


def _section(name: str, **extra: Any) -> dict[str, Any]:
    return {"cli_group": name, **extra}


class FeatureTrainConfig(BaseModel):
    """How to learn the head and codebooks on a feature archive (labels never read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=64, description="code length: 32, 64 or 128 bits")
    codebook_size: int = Field(default=256, description="K: 16 (4-bit codes) or 256 (8-bit)")
    descriptor_dim: int = Field(default=0, ge=0, description="M*d; 0: the input dim")
    head_hidden: int = Field(default=0, ge=0, description="hidden width of the head; 0: linear")
    signal: Signal = Field(
        default="slide+neighbours",
        description="label-free training signal: the float vectors' own neighbour ranking "
        "(neighbours), another region of the same slide (slide), noisy views (views), or "
        "slide and neighbours together (slide+neighbours)",
    )
    epochs: int = Field(default=2, ge=0, description="passes over the training rows")
    batch_size: int = Field(default=1024, ge=4, description="rows per step")
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam learning rate")
    temperature: float = Field(default=0.2, gt=0, description="temperature of the CQC loss")
    distillation_temperature: float = Field(
        default=0.05, gt=0, description="softmax temperature of the neighbour distillation"
    )
    neighbours: int = Field(default=10, ge=1, description="float neighbours a batch draws from")
    kmeans_iterations: int = Field(default=20, ge=0, description="final codebook refit")
    opq_init: bool = Field(
        default=True, description="start the linear head at FAISS's OPQ rotation"
    )
    seed: int = Field(default=0, description="random seed of the split, initialisation, batches")
    threads: int = Field(default=2, ge=1, description="CPU threads for torch and FAISS")
    feature_model: str = Field(default="", description="the model that produced the vectors")

    @property
    def num_codebooks(self) -> int:
        return code_geometry(self.bits, self.codebook_size)


class FeatureRunConfig(BaseModel):
    """Every setting of one training run on a feature archive; written as ``config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["images", "features"] = Field(
        default="images",
        description="what --data holds: images (every option above) or vectors a foundation "
        "model already produced (features: the options below)",
        json_schema_extra=_section(FEATURE_DATA),
    )
    data: str = Field(
        description="a .npy of rows with a CSV of one line per row beside it, or a folder of "
        ".h5 / .pt files (one per slide, with an optional manifest.csv)",
        json_schema_extra=_section(FEATURE_DATA),
    )
    out: str = Field(
        description="run folder for model.pt, model_card.json, config.json, history.json and "
        "training.png",
        json_schema_extra=_section(FEATURE_DATA),
    )
    label_column: str = Field(
        default="label",
        description="CSV column of the label (read only to report validation quality)",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="COLUMN"),
    )
    group_column: str = Field(
        default="group",
        description="CSV column of the group (patient): the split keeps each group whole",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="COLUMN"),
    )
    slide_column: str = Field(
        default="slide_id",
        description="CSV column of the slide id",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="COLUMN"),
    )
    validation_groups: list[str] | None = Field(
        default=None,
        description="groups held out for validation (default: a seeded --validation-fraction "
        "of the groups)",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="GROUP"),
    )
    test_groups: list[str] | None = Field(
        default=None,
        description="groups held out for testing, never trained on (default: a seeded "
        "--test-fraction of the groups)",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="GROUP"),
    )
    test_groups_file: Path | None = Field(
        default=None,
        description="a file of test groups, one a line (for many patients); joins --test-groups",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="FILE"),
    )
    validation_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="share of groups for validation when none are named",
        json_schema_extra=_section(FEATURE_DATA),
    )
    test_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="share of groups for testing when none are named",
        json_schema_extra=_section(FEATURE_DATA),
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="read only the first LIMIT rows (a quick run on a large archive)",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="ROWS"),
    )
    validation_queries: int = Field(
        default=2000,
        ge=1,
        description="validation rows that query the training rows for the reported P@10",
        json_schema_extra=_section(FEATURE_DATA, cli_metavar="ROWS"),
    )
    training: FeatureTrainConfig = Field(
        default_factory=FeatureTrainConfig,
        json_schema_extra=_section(FEATURE_MODEL, cli_prefix=""),
    )

    @model_validator(mode="after")
    def _a_feature_model_is_named(self) -> FeatureRunConfig:
        if self.source != "features":
            raise ValueError("a feature run needs --source features")
        if not self.training.feature_model:
            raise ValueError(
                "--feature-model is required with --source features: the name of the model "
                "that produced the vectors (e.g. hipt, uni); an index refuses a model made for "
                "another one's vectors"
            )
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("--validation-fraction + --test-fraction must stay below 1")
        return self
