"""The settings of a training run: one validated model, read back wherever a run is reused.

`TrainConfig` is the only place a training setting and its default are written. `histosearch
train` generates its options, their help and their defaults from it (``indexer/cli/options.py``);
the run writes it to ``config.json`` and into the model card (``card.training``), and evaluation
reads the split back from there through `recorded_config`. The model's own settings (backbone,
descriptor, M, K, d, input size) are the card's `ModelSpec`, nested rather than repeated, and the
augmentation recipe is `AugmentationConfig`, nested likewise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.augment import AugmentationConfig
from model.card import ModelCard, ModelSpec
from model.errors import HistosearchError

# Help sections of `histosearch train --help`, in the order they are listed.
DATA = "data and split"
BUDGET = "budget and schedule"
MODEL = "model and loss"
AUGMENTATION = "augmentation (two views per image)"
HARDWARE = "hardware"
# 128 px keeps 64 px crops of a 64 px input at their full detail; a larger input is preloaded at
# its own size, never below it (a 224 px preset preloaded at 128 would be upsampled, blurred).
MIN_PRELOAD_SIZE = 128
# What `histosearch prepare` and `demo` train for when an archive has no model yet: epochs, so
# that the demo gets the same budget and schedule on a slow machine as on a fast one (its
# held-out groups peaked between epochs 20 and 80), and minutes as a cap for archives too large
# for that many epochs. Runs are not bit-identical: CPU kernels are not deterministic.
PREPARE_EPOCHS = 80
PREPARE_MINUTES = 5.0


def _section(name: str, **extra: Any) -> dict[str, Any]:
    return {"cli_group": name, **extra}


class TrainConfigError(HistosearchError, ValueError):
    """Training settings that do not validate, or a checkpoint without a usable training record."""


class TrainConfig(BaseModel):
    """Every setting of a training run; written as ``config.json`` beside its outputs and kept in
    the model card."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str = Field(
        description="image folder (class sub-folders) or CSV manifest (path,label,group)",
        json_schema_extra=_section(DATA),
    )
    out: str = Field(
        description="run folder for checkpoints, config, history and plot",
        json_schema_extra=_section(DATA),
    )
    validation_groups: list[str] | None = Field(
        default=None,
        description="groups held out for validation (default: a seeded random "
        "--validation-fraction of groups, chosen so that held-out classes recur in another "
        "held-out group)",
        json_schema_extra=_section(DATA, cli_metavar="GROUP"),
    )
    test_groups: list[str] | None = Field(
        default=None,
        description="groups held out for testing (default: a random --test-fraction of groups)",
        json_schema_extra=_section(DATA, cli_metavar="GROUP"),
    )
    validation_fraction: float = Field(
        default=0.15,
        ge=0.0,
        lt=1.0,
        description="share of groups for validation when none are named",
        json_schema_extra=_section(DATA),
    )
    test_fraction: float = Field(
        default=0.3,
        ge=0.0,
        lt=1.0,
        description="share of groups for testing when none are named",
        json_schema_extra=_section(DATA),
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="random seed for split, initialisation and augmentation",
        json_schema_extra=_section(BUDGET),
    )
    epochs: int = Field(
        default=300,
        gt=0,
        description="maximum number of epochs",
        json_schema_extra=_section(BUDGET),
    )
    minutes: float | None = Field(
        default=None,
        gt=0.0,
        description="stop after this many minutes of training (default: no time limit); the "
        "learning-rate schedule follows whichever budget runs out first",
        json_schema_extra=_section(BUDGET),
    )
    batch_size: int = Field(
        default=32,
        ge=2,
        description="images per step, each giving two views (at least 2: the other images of a "
        "batch are the contrastive negatives)",
        json_schema_extra=_section(BUDGET),
    )
    learning_rate: float = Field(
        default=1e-3,
        gt=0.0,
        description="peak Adam learning rate, reached after warm-up, then cosine decay",
        json_schema_extra=_section(BUDGET),
    )
    warmup_fraction: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="share of the run spent warming the learning rate up linearly",
        json_schema_extra=_section(BUDGET),
    )
    weight_decay: float = Field(
        default=1e-5, ge=0.0, description="Adam weight decay", json_schema_extra=_section(BUDGET)
    )
    validate_every: int = Field(
        default=10,
        gt=0,
        description="epochs between validations",
        json_schema_extra=_section(BUDGET),
    )
    checkpoint_every_minutes: float = Field(
        default=2.0,
        gt=0.0,
        description="minutes between last.pt saves",
        json_schema_extra=_section(BUDGET),
    )
    cached_views: int = Field(
        default=0,
        ge=0,
        description="with --freeze-backbone: encode this many augmented views of every training "
        "image once through the frozen backbone, then train the head on pairs of distinct cached "
        "views with no backbone forward per step (0: off; at least 2 when on)",
        json_schema_extra=_section(BUDGET),
    )
    view_cache_dir: str | None = Field(
        default=None,
        description="folder of view caches shared between runs (default: OUT/cache); a cache is "
        "reused by any run with the same backbone, weights, data, input size, augmentation and "
        "--cached-views",
        json_schema_extra=_section(BUDGET),
    )
    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description="architecture, code geometry and input size, as recorded in the model card",
        json_schema_extra=_section(MODEL, cli_prefix=""),
    )
    backbone_weights: str | None = Field(
        default=None,
        description="backbone weights: a local file (.safetensors, .bin, .pth, in its "
        "publisher's key layout), 'torchvision' to download a ResNet's ImageNet weights, or "
        "'hub' for timm's hub loader of a preset (gated models need an accepted licence and a "
        "login) (default: random initialisation)",
        json_schema_extra=_section(MODEL),
    )
    preload_size: int | None = Field(
        default=None,
        ge=16,
        description="side at which images are kept in memory and cropped from (default: "
        f"{MIN_PRELOAD_SIZE} or the input size, whichever is larger)",
        json_schema_extra=_section(MODEL),
    )
    # SPQ's 0.5 goes with its batch of 256. At the default batch of 32 (62 negatives per row) the
    # sharper 0.2 raised the codes' validation P@10 in equal 2.5-minute runs on LC25000 (0.889 to
    # 0.915), IDC (0.690 to 0.745) and Kather (0.530 to 0.544) and left PCam level (0.670 and
    # 0.659): benchmarks/results/recipe_sweep_*.json, validation groups only.
    temperature: float = Field(
        default=0.2,
        gt=0.0,
        description="CQC loss temperature dividing cosine similarities (SPQ's is 0.5, at batch "
        "256)",
        json_schema_extra=_section(MODEL),
    )
    negative_queue: int = Field(
        default=0,
        ge=0,
        description="keep the soft-quantised descriptors of the latest training batches, up to "
        "this many rows, as extra negatives of the contrastive loss (0: the batch's own only)",
        json_schema_extra=_section(MODEL),
    )
    neighbour_support: int = Field(
        default=0,
        ge=0,
        description="keep the descriptors of the latest training views, up to this many rows, "
        "and contrast each view's codes also with its nearest neighbour among them instead of "
        "its own other view (0: off)",
        json_schema_extra=_section(MODEL),
    )
    neighbour_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of the contrastive loss given to the nearest-neighbour pairs when "
        "--neighbour-support is on (1: those pairs alone)",
        json_schema_extra=_section(MODEL),
    )
    codeword_regularizer: float = Field(
        default=1.0,
        ge=0.0,
        description="weight of the codeword-usage regulariser, 0 to disable",
        json_schema_extra=_section(MODEL),
    )
    reset_dead_codewords: bool = Field(
        default=True,
        description="move codewords no code used in an epoch onto the data, during the first "
        "half of training",
        json_schema_extra=_section(MODEL),
    )
    refit_codebooks: bool = Field(
        default=True,
        description="after training, refit each codebook of the chosen checkpoint by "
        "spherical k-means on the training images' descriptors, kept only where the codes' "
        "validation P@10 does not fall",
        json_schema_extra=_section(MODEL),
    )
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig,
        description="the augmentation recipe",
        json_schema_extra=_section(AUGMENTATION, cli_prefix=""),
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (CUDA if available), cpu, cuda or cuda:N",
        json_schema_extra=_section(HARDWARE),
    )
    # Mixed precision of the forward and backward pass; losses and codebooks stay float32.
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="arithmetic of the network during training: auto uses bfloat16 mixed "
        "precision on a GPU that supports it or a CPU with AMX units, where it is faster, else "
        "float32 (a CPU with AVX512-BF16 alone runs bfloat16 slower than float32); "
        "losses and codebooks are always float32",
        json_schema_extra=_section(HARDWARE),
    )
    threads: int | None = Field(
        default=None,
        gt=0,
        description="CPU threads for torch (default: torch's choice)",
        json_schema_extra=_section(HARDWARE),
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_model_settings(cls, data: Any) -> Any:
        """Training records written before the model settings were nested kept them at the top
        level (``{"backbone": ..., "num_codebooks": ...}``): move them under ``model``."""
        if not isinstance(data, dict):
            return data
        flat = {name: data[name] for name in ModelSpec.model_fields if name in data}
        if not flat:
            return data
        nested = data.get("model", {})
        if isinstance(nested, ModelSpec):
            nested = nested.model_dump()
        rest = {name: value for name, value in data.items() if name not in flat}
        return {**rest, "model": {**flat, **nested}}

    @model_validator(mode="after")
    def _held_out_fractions_leave_training_groups(self) -> TrainConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(
                "validation_fraction + test_fraction must stay below 1 to leave groups for "
                f"training, got {self.validation_fraction} + {self.test_fraction}"
            )
        return self

    @model_validator(mode="after")
    def _cached_views_need_a_frozen_backbone(self) -> TrainConfig:
        if self.cached_views == 0:
            return self
        if not self.model.backbone_is_frozen:
            raise ValueError(
                "--cached-views trains on backbone outputs computed once, which is only exact "
                "when the backbone does not learn: add --freeze-backbone"
            )
        if self.model.stain_descriptor:
            raise ValueError(
                "--cached-views keeps backbone outputs only, and --stain-descriptor reads the "
                "pixels of each view: give one of them"
            )
        if self.cached_views < 2:
            raise ValueError(
                f"--cached-views {self.cached_views}: training pairs two distinct views of an "
                "image, so at least 2 views are needed"
            )
        return self

    @model_validator(mode="after")
    def _a_stain_view_needs_the_stain_branch(self) -> TrainConfig:
        if self.augmentation.stain_branch_view != "augmented" and not self.model.stain_descriptor:
            raise ValueError(
                "--stain-branch-view geometric says what the stain-colour branch reads, and this "
                "model has none: add --stain-descriptor"
            )
        return self

    def preload_side(self) -> int:
        """The side images are kept at in memory: --preload-size, or by default the larger of
        128 and the input size."""
        if self.preload_size is not None:
            return self.preload_size
        return max(MIN_PRELOAD_SIZE, self.model.input_size)

    def model_card(self, dataset_fingerprint: str) -> ModelCard:
        """The card of a model trained with these settings, carrying them as ``training``."""
        return ModelCard(
            **self.model.model_dump(),
            training=self.model_dump(mode="json"),
            dataset_fingerprint=dataset_fingerprint,
        )


def recorded_config(card: ModelCard) -> TrainConfig:
    """The validated settings a checkpoint was trained with, read from its card."""
    if not card.training:
        raise TrainConfigError(
            "the model card records no training run (the model was not trained by "
            "`histosearch train`), so it has no split to evaluate on; evaluate --part all"
        )
    try:
        return TrainConfig.model_validate(card.training)
    except ValidationError as error:
        raise TrainConfigError(
            f"the model card's training record is not a valid training config: {error}"
        ) from None
