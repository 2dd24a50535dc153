"""The model card: everything needed to rebuild, feed and trust a checkpoint.

The indexer and the service read input size, normalisation and code geometry from here and copy no
constants, so a checkpoint trained at another size or with other codebooks cannot be fed wrongly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS

PoolingName = Literal["spoc", "mac", "gem", "attention"]
StageNumber = Literal[1, 2, 3, 4]

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelCard", "ModelSpec", "code_geometry"]

CODE_VERSION = "spq-2"
DEFAULT_POOLING: tuple[PoolingName, ...] = ("spoc", "mac", "gem")
DEFAULT_STAGES: tuple[StageNumber, ...] = (2, 3)
# timm backbones feed the head from their last output only: the token grid or the last map.
TIMM_STAGES: list[StageNumber] = [4]
TIMM_PREFIX = "timm:"
# Bits per code -> sub-spaces M, for the two codebook sizes the index serves fast:
# K=16 (4-bit codes, FAISS FastScan) and K=256 (8-bit codes, FAISS's flat IndexPQ).
SUPPORTED_CODE_BITS = (32, 64, 128)
STAIN_VARIANCE_FLOOR = 2.5e-3
# The floor cards with the stain-colour branch had before the field existed: BatchNorm's eps.
LEGACY_STAIN_VARIANCE_FLOOR = 1e-5


def code_geometry(bits: int, codebook_size: int = 16) -> int:
    """The number of sub-spaces M that gives ``bits``-bit codes at codebook size K."""
    if bits not in SUPPORTED_CODE_BITS or codebook_size not in (16, 256):
        raise ValueError(
            f"supported codes: {SUPPORTED_CODE_BITS} bits at K=16 or K=256, got {bits} bits at "
            f"K={codebook_size}"
        )
    return bits // round(math.log2(codebook_size))


def is_timm_backbone_name(name: str) -> bool:
    return name in PRESETS or name.startswith(TIMM_PREFIX)


def _timm_preprocessing(name: str) -> dict[str, Any]:
    """A preset's input size, mean and std; timm's own config (which loads torch) otherwise."""
    preset = PRESETS.get(name)
    if preset is not None:
        return {"input_size": preset.input_size, "mean": preset.mean, "std": preset.std}
    from model.timm_backbones import timm_preprocessing

    return timm_preprocessing(name)


class ModelSpec(BaseModel):
    """What to build and how to feed it: backbone, descriptor, code geometry (M, K, d) and input
    size. The training config nests it and the model card extends it, so each of these settings
    and its default is written once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str = Field(
        default="resnet18",
        description="backbone network: resnet18, resnet34, resnet50, a foundation-model preset "
        "(uni, uni2-h, virchow2, h-optimus-0, h-optimus-1, h0-mini, prov-gigapath, "
        "kaiko-vits16, lunit-vits16, phikon-v2: see `histosearch backbones`) or "
        "timm:<model_name>; timm backbones default to their own input size and normalisation",
    )
    small_input_stem: bool = Field(
        default=False,
        description="3x3 stride-1 stem without max-pool, for small tiles (slower)",
    )
    # Stages 2 and 3 measured best on 64 px tiles: stage 4 sees a 2x2 map there (see docs/model.md).
    stages: list[StageNumber] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description="backbone stages whose feature maps are pooled into the descriptor, listed "
        "once each, shallowest first; stages deeper than the last one are not built",
    )
    pooling: list[PoolingName] = Field(
        default_factory=lambda: list(DEFAULT_POOLING),
        description="global descriptors to combine, each listed once",
    )
    hidden_dim: int = Field(
        default=512, gt=0, description="width of the hidden layer of the descriptor head"
    )
    num_codebooks: int = Field(
        default=8, gt=0, description="M, sub-spaces of the product quantiser (one codebook each)"
    )
    codebook_size: int = Field(
        default=16, gt=1, description="K, codewords per sub-space, a power of two"
    )
    codeword_dim: int = Field(default=16, gt=0, description="d, dimensions per sub-space")
    input_size: int = Field(default=64, ge=16, description="side in pixels of the network input")
    # Soft assignment weights are softmax_k(-scale * ||x_m - c_mk||^2): the scale MULTIPLIES.
    soft_quantization_scale: float = Field(
        default=5.0,
        gt=0,
        description="multiplies squared distances in the soft assignment softmax",
    )
    # Off by default: it raised validation P@10 on LC25000 and IDC but lowered it on Kather
    # (docs/model.md); a card written before the field existed reads as having none.
    stain_descriptor: bool = Field(
        default=False,
        description="add a stain-colour branch to the descriptor head: optical-density mean, "
        "standard deviation and joint histogram of the input pixels (keeps the colour cue a "
        "colour histogram retrieves by; see docs/model.md)",
    )
    stain_histogram_bins: int = Field(
        default=6,
        ge=2,
        le=16,
        description="optical-density histogram bins per channel of the stain-colour branch",
    )
    # Most of the joint histogram's bins are empty in nearly every tile (159 of 216 on PCam have
    # a variance under 1e-4); standardised against a variance of ~0 they turn a few stray pixels
    # into the largest coordinates. A floor of 2.5e-3 (a standard deviation of 0.05) raised the
    # branch's own validation P@10 on IDC and PCam by 0.01-0.02 (docs/model.md).
    stain_variance_floor: float = Field(
        default=STAIN_VARIANCE_FLOOR,
        gt=0.0,
        description="added to each stain-colour feature's variance before it is standardised",
    )
    freeze_backbone: bool = Field(
        default=False,
        description="keep the backbone's weights fixed: only the descriptor head, projection "
        "and codebooks learn",
    )
    train_last_blocks: int | None = Field(
        default=None,
        ge=0,
        description="train only the last N blocks of the backbone (and the norm after them), "
        "the rest fixed (default: the whole backbone learns)",
        json_schema_extra={"cli_metavar": "N"},
    )

    @model_validator(mode="before")
    @classmethod
    def _timm_backbones_default_to_their_own_preprocessing(cls, data: Any) -> Any:
        """A timm backbone's input size (and, on a card, mean and std) default to those it was
        trained with, and its stages to its last output."""
        if not isinstance(data, dict) or not is_timm_backbone_name(str(data.get("backbone", ""))):
            return data
        own = {"stages": TIMM_STAGES, **_timm_preprocessing(str(data["backbone"]))}
        defaults = {name: value for name, value in own.items() if name in cls.model_fields}
        return {**defaults, **data}

    @field_validator("pooling")
    @classmethod
    def _pooling_is_a_nonempty_set(cls, value: list[PoolingName]) -> list[PoolingName]:
        if not value:
            raise ValueError("pooling needs at least one of spoc, mac, gem, attention")
        if len(set(value)) != len(value):
            raise ValueError(f"pooling lists a method twice: {value}")
        return value

    @field_validator("stages")
    @classmethod
    def _stages_are_sorted_backbone_stages(cls, value: list[StageNumber]) -> list[StageNumber]:
        if not value:
            raise ValueError("stages must be a non-empty subset of 1, 2, 3, 4")
        if sorted(set(value)) != value:
            raise ValueError(f"stages must be listed once each, shallowest first, got {value}")
        return value

    @field_validator("codebook_size")
    @classmethod
    def _codebook_size_is_a_power_of_two(cls, value: int) -> int:
        # Codes are packed into log2(K) bits each; other sizes would waste bits silently.
        if value & (value - 1):
            raise ValueError(f"codebook_size must be a power of two, got {value}")
        return value

    @model_validator(mode="after")
    def _timm_backbone_settings_fit(self) -> ModelSpec:
        if not is_timm_backbone_name(self.backbone):
            return self
        if self.stages != TIMM_STAGES or self.small_input_stem:
            raise ValueError(
                f"{self.backbone} feeds the descriptor from its last output only: stages must be "
                f"{TIMM_STAGES} and small_input_stem false (got stages {self.stages})"
            )
        preset = PRESETS.get(self.backbone)
        fixed_size = preset is not None and not preset.timm_kwargs.get("dynamic_img_size", False)
        if fixed_size and preset is not None and self.input_size != preset.input_size:
            raise ValueError(
                f"{self.backbone} takes {preset.input_size} px input only "
                f"(built with dynamic_img_size=False, as published), got {self.input_size}"
            )
        return self

    @model_validator(mode="after")
    def _training_modes_agree(self) -> ModelSpec:
        if self.freeze_backbone and self.train_last_blocks:
            raise ValueError(
                "freeze_backbone freezes every block; train_last_blocks N trains the last N: "
                "give one of them"
            )
        return self

    @property
    def backbone_is_frozen(self) -> bool:
        """True when no backbone parameter learns."""
        return self.freeze_backbone or self.train_last_blocks == 0


class ModelCard(ModelSpec):
    """Architecture, code geometry, preprocessing and provenance of one SPQ model."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The validated training config (``indexer.learn.config.TrainConfig``) as JSON-ready data.
    training: dict[str, Any] = Field(default_factory=dict)
    dataset_fingerprint: str = ""
    code_version: str = CODE_VERSION
    parameter_count: int = 0
    flops_per_image: int = 0
    # Where the backbone's initial weights came from ("" = random: "file:NAME", a hub id or
    # "torchvision:..."), and the SHA-256 of that weights file; an index refuses a model whose
    # backbone started from other weights (see `compatibility_key`).
    backbone_weights: str = ""
    backbone_weights_sha256: str = ""
    # The embedding the backbone's publisher reads out (e.g. 1024 for UNI, 2560 for Virchow2).
    embedding_dim: int = Field(default=0, ge=0)
    # A feature model (`model.feature_spq`) reads vectors another model produced, not pixels:
    # their length, the name of that model, and the head's hidden width (0: linear). 0 / "" on
    # every image model, whose keys then stay what they were.
    input_dim: int = Field(default=0, ge=0)
    feature_model: str = ""
    feature_head_hidden: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _stain_cards_without_a_floor_keep_the_one_they_were_trained_with(cls, data: Any) -> Any:
        """A stored card (a dump, which always names its code version) from before
        `stain_variance_floor` existed was trained with BatchNorm's own eps; reading it with
        today's default would change its descriptors."""
        if (
            isinstance(data, dict)
            and "code_version" in data
            and data.get("stain_descriptor")
            and "stain_variance_floor" not in data
        ):
            return {**data, "stain_variance_floor": LEGACY_STAIN_VARIANCE_FLOOR}
        return data

    @field_validator("std")
    @classmethod
    def _std_is_positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"std must be positive, got {value}")
        return value

    @property
    def descriptor_dim(self) -> int:
        return self.num_codebooks * self.codeword_dim

    @property
    def bits(self) -> int:
        return self.num_codebooks * round(math.log2(self.codebook_size))

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.bits / 8)

    def architecture_fields(self) -> dict[str, Any]:
        """The fields that decide the shapes of the weights. The stain-colour branch's fields
        are named only when it is on, so that the key of a model without it is the key every
        index built before the branch existed recorded."""
        fields = self.model_dump(
            include={
                "backbone",
                "small_input_stem",
                "stages",
                "pooling",
                "hidden_dim",
                "num_codebooks",
                "codebook_size",
                "codeword_dim",
            }
        )
        if self.input_dim:
            fields.update(
                input_dim=self.input_dim,
                feature_model=self.feature_model,
                feature_head_hidden=self.feature_head_hidden,
            )
        if self.stain_descriptor:
            fields.update(stain_descriptor=True, stain_histogram_bins=self.stain_histogram_bins)
            if self.stain_variance_floor != LEGACY_STAIN_VARIANCE_FLOOR:
                fields.update(stain_variance_floor=self.stain_variance_floor)
        return fields

    def compatibility_key(self) -> dict[str, Any]:
        """The fields on which an index and a model must agree for codes and queries to match."""
        key = self.architecture_fields()
        key.update(
            input_size=self.input_size,
            mean=list(self.mean),
            std=list(self.std),
            code_version=self.code_version,
            backbone_weights_sha256=self.backbone_weights_sha256,
        )
        return key
