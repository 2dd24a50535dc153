"""`histosearch train`: self-supervised SPQ training on a folder of images or a CSV manifest, or
(``--source features``) on the vectors a foundation model already produced."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from indexer.cli.options import (
    DEST_PREFIX,
    OptionError,
    Shorthand,
    add_model_options,
    foreign_options,
    model_options,
    validated_model,
)
from indexer.learn.config import TrainConfig
from indexer.learn.feature_config import FeatureRunConfig
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

--source features: train a feature model on vectors a foundation model already produced (a
.npy of rows with a CSV of one line per row beside it, or a folder of .h5 / .pt files), e.g.

  histosearch train --source features --data regions.npy --feature-model hipt \
      --label-column cancer_type --group-column patient_id --test-groups-file test.txt \
      --out runs/hipt

Groups are patients: named test groups (--test-groups, --test-groups-file) are never trained
on, and validation groups only report P@10. Defaults take a few minutes on 100k rows of 192
floats on 2 CPU cores; --limit ROWS and --epochs shorten a trial. Writes model.pt (the feature
checkpoint `histosearch index --source features` takes), model_card.json, config.json,
history.json and training.png. Those options are fields of indexer/learn/feature_config.py;
image-only options are refused with --source features.
"""

SOURCE_DEST = DEST_PREFIX + "--source"

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
    add_model_options(parser, FeatureRunConfig, variant="--source features")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt (weights, optimiser, epoch, elapsed time)",
    )
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated run settings; options not given take TrainConfig's defaults."""
    image_options = model_options(TrainConfig)
    feature_only = foreign_options(args, image_options, model_options(FeatureRunConfig))
    _refuse([flag for flag in feature_only if flag != "--source"], "--source features only")
    source = vars(args).get(SOURCE_DEST, "images")
    if source != "images":
        raise OptionError(
            f"--source {source} trains a feature model (see feature_config_from_args)"
        )
    return validated_model(TrainConfig, args, image_options, SHORTHANDS)


def feature_config_from_args(args: argparse.Namespace) -> FeatureRunConfig:
    """The validated settings of a --source features run; image-only options are refused."""
    feature_options = model_options(FeatureRunConfig)
    _refuse(
        foreign_options(args, feature_options, model_options(TrainConfig)),
        "image training, not --source features",
    )
    if any(dest.startswith(DEST_PREFIX + "shorthand:") for dest in vars(args)):
        _refuse(
            [shorthand.flag for shorthand in SHORTHANDS], "image training, not --source features"
        )
    return validated_model(FeatureRunConfig, args, feature_options)


def _refuse(flags: list[str], where: str) -> None:
    if flags:
        raise OptionError(
            f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} to {where}"
        )


def run(args: argparse.Namespace) -> int:
    if vars(args).get(SOURCE_DEST) == "features":
        return run_features(args)
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


def run_features(args: argparse.Namespace) -> int:
    """Train a feature model on a feature archive (see `indexer.learn.feature_run`)."""
    from indexer.learn.feature_run import train_feature_run

    try:
        config = feature_config_from_args(args)
        model = train_feature_run(config)
    except (HistosearchError, ValueError) as error:
        print(f"histosearch train: {error}", file=sys.stderr)
        return 2
    print(f"model written to {model}")
    return 0
