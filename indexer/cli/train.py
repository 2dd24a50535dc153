"""`histosearch train`: self-supervised SPQ training on a folder of images or a CSV manifest."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from indexer.cli.options import (
    OptionError,
    Shorthand,
    add_model_options,
    model_options,
    validated_model,
)
from indexer.learn.config import TrainConfig
from model.errors import HistosearchError

DESCRIPTION = """\
Train an SPQ model without labels: two augmented views of each training image, Cross Quantized
Contrastive loss, product-quantisation codebooks learned with the network.

Images are split by group (CSV 'group' column; one group per image otherwise) into training,
validation and test groups. Training never reads a label; validation labels draw the retrieval
curve and choose the checkpoint; test groups are left for `histosearch evaluate`.

Outputs in --out: model.pt (checkpoint with its model card; best validation P@10 of the codes,
else the last), last.pt (for --resume), config.json (resolved settings and split),
history.json and training.png (loss and validation P@10 over epochs).

Every option below is a field of the training config (indexer/learn/config.py), which holds its
default and validates it; config.json and the model card record the config in full.
"""

# Kept from earlier versions: one strength for both halves of the stain jitter.
SHORTHANDS = (
    Shorthand(
        "--hed-strength",
        targets=(("augmentation", "hed_scale"), ("augmentation", "hed_shift")),
        value_type=float,
        help="sets --hed-scale and --hed-shift together (either, given too, takes precedence)",
    ),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SPQ model (self-supervised)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, TrainConfig, SHORTHANDS)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt (weights, optimiser, epoch, elapsed time)",
    )
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated run settings; options not given take TrainConfig's defaults."""
    return validated_model(TrainConfig, args, model_options(TrainConfig), SHORTHANDS)


def run(args: argparse.Namespace) -> int:
    from indexer.learn.training import train

    try:
        config = config_from_args(args)
    except OptionError as error:
        print(f"histosearch train: {error}", file=sys.stderr)
        return 2
    try:
        final = train(config, resume=args.resume)
    except HistosearchError as error:
        print(f"histosearch train: {error}", file=sys.stderr)
        return 2
    print(f"model written to {final}")
    return 0
