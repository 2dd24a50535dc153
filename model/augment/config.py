"""The augmentation recipe's settings: plain validated data, importable without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AugmentationConfig(BaseModel):
    """Strengths of each augmentation; a probability of 0 switches one off.

    The defaults are an H&E recipe: all eight dihedral symmetries, mild stain and colour jitter,
    no grey views. SPQ's SimCLR set (``spq_reference()``: colour jitter 0.4 / hue 0.1, grey p=0.2)
    makes descriptors blind to colour, which on H&E is what tells fat, stroma, lymphocytes and
    mucus apart; it measured worse here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_crop_scale: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="smallest random crop, as a share of the image area",
    )
    dihedral: bool = Field(
        default=True,
        description="random flips and 90-degree turns (tissue has no up or down, so they lose "
        "nothing)",
    )
    rotation_degrees: float = Field(
        default=0.0,
        ge=0.0,
        le=180.0,
        description="random rotation by up to this many degrees either way, on top of the "
        "90-degree turns and flips, borders reflected; 0 switches it off",
    )
    rotation_p: float = Field(
        default=0.8, ge=0.0, le=1.0, description="probability of that random rotation"
    )
    hed_scale: float = Field(
        default=0.03,
        ge=0.0,
        description="stain jitter: haematoxylin/eosin amounts scaled by U(1-s, 1+s)",
    )
    hed_shift: float = Field(
        default=0.03,
        ge=0.0,
        description="stain jitter: haematoxylin/eosin amounts shifted by U(-b, b)",
    )
    hed_p: float = Field(default=0.8, ge=0.0, le=1.0, description="probability of the stain jitter")
    colour_strength: float = Field(
        default=0.1,
        ge=0.0,
        description="brightness/contrast/saturation jitter; 0.4 is SimCLR's, which erases the "
        "colour cues that separate H&E tissue types",
    )
    hue: float = Field(default=0.02, ge=0.0, le=0.5, description="hue jitter, in turns")
    colour_p: float = Field(
        default=0.8, ge=0.0, le=1.0, description="probability of the colour jitter"
    )
    grayscale_p: float = Field(
        default=0.0, ge=0.0, le=1.0, description="probability of a grey view"
    )
    blur_p: float = Field(default=0.5, ge=0.0, le=1.0, description="probability of a Gaussian blur")
    # The stain-colour branch measures colour; trained on jittered views, the contrastive loss
    # teaches it to ignore the very differences it is there to keep (docs/model.md).
    stain_branch_view: Literal["augmented", "geometric"] = Field(
        default="augmented",
        description="what the stain-colour branch reads in training: the augmented view the "
        "backbone reads, or the same crop before the stain, colour and blur jitter (the two views "
        "of an image then agree in colour, so the branch keeps the colour cue)",
    )

    @classmethod
    def spq_reference(cls) -> AugmentationConfig:
        """The SPQ / SimCLR colour settings, with the H&E geometry and stain jitter kept."""
        return cls(colour_strength=0.4, hue=0.1, grayscale_p=0.2, hed_scale=0.05, hed_shift=0.05)
