"""The SPQ model: network, loss, augmentations, checkpoints with model cards, preprocessing."""

from model.augment import AugmentationConfig, build_augmentation
from model.backbones import BACKBONES, UnknownBackboneError
from model.card import ModelCard
from model.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_card,
    read_checkpoint,
    save_checkpoint,
)
from model.embedder import Embedder
from model.loss import CodewordUsageRegularizer, CrossQuantizedContrastiveLoss
from model.preprocess import (
    UnsupportedPixelsError,
    normalize,
    preprocess,
    select_device,
    to_rgb,
)
from model.quantizer import ProductQuantizer, adc_scores, codeword_usage
from model.spq import SPQModel, build_model

__all__ = [
    "BACKBONES",
    "AugmentationConfig",
    "CheckpointMismatchError",
    "CodewordUsageRegularizer",
    "CrossQuantizedContrastiveLoss",
    "Embedder",
    "ModelCard",
    "ProductQuantizer",
    "SPQModel",
    "UnknownBackboneError",
    "UnsupportedPixelsError",
    "adc_scores",
    "build_augmentation",
    "build_model",
    "codeword_usage",
    "load_checkpoint",
    "normalize",
    "preprocess",
    "read_card",
    "read_checkpoint",
    "save_checkpoint",
    "select_device",
    "to_rgb",
]
