"""The model card: everything needed to rebuild, feed and trust a checkpoint.

The indexer and the service read input size, normalisation and code geometry from here and copy no
constants, so a checkpoint trained at another size or with other codebooks cannot be fed wrongly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PoolingName = Literal["spoc", "mac", "gem", "attention"]
StageNumber = Literal[1, 2, 3, 4]

# ImageNet statistics: the usual choice, and the right one for torchvision's pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CODE_VERSION = "spq-2"
DEFAULT_POOLING: tuple[PoolingName, ...] = ("spoc", "mac", "gem")
DEFAULT_STAGES: tuple[StageNumber, ...] = (2, 3)


class ModelSpec(BaseModel):
    """What to build and how to feed it: backbone, descriptor, code geometry (M, K, d) and input
    size. The training config nests it and the model card extends it, so each of these settings
    and its default is written once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str = Field(
        default="resnet18", description="backbone network: resnet18, resnet34 or resnet50"
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
        """The fields that decide the shapes of the weights."""
        return self.model_dump(
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

    def compatibility_key(self) -> dict[str, Any]:
        """The fields on which an index and a model must agree for codes and queries to match."""
        key = self.architecture_fields()
        key.update(
            input_size=self.input_size,
            mean=list(self.mean),
            std=list(self.std),
            code_version=self.code_version,
        )
        return key
