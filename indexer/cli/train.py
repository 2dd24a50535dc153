"""`histosearch train`: self-supervised SPQ training on a folder of images or a CSV manifest."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.learn.training import TrainConfig

DESCRIPTION = """\
Train an SPQ model without labels: two augmented views of each training image, Cross Quantized
Contrastive loss, product-quantisation codebooks learned with the network.

Images are split by group (CSV 'group' column; one group per image otherwise) into training,
validation and test groups. Training never reads a label; validation labels draw the retrieval
curve and choose the checkpoint; test groups are left for `histosearch evaluate`.

Outputs in --out: model.pt (checkpoint with its model card; best validation P@10 of the codes,
else the last), last.pt (for --resume), config.json (resolved settings and split),
history.json and training.png (loss and validation P@10 over epochs).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SPQ model (self-supervised)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data and split")
    data.add_argument(
        "--data",
        required=True,
        help="image folder (class sub-folders) or CSV manifest (path,label,group)",
    )
    data.add_argument(
        "--out", required=True, help="run folder for checkpoints, config, history and plot"
    )
    data.add_argument(
        "--validation-groups",
        nargs="+",
        metavar="GROUP",
        help="groups held out for validation (default: a seeded random --validation-fraction "
        "of groups, chosen so that held-out classes recur in another held-out group)",
    )
    data.add_argument(
        "--test-groups",
        nargs="+",
        metavar="GROUP",
        help="groups held out for testing (default: a random --test-fraction of groups)",
    )
    data.add_argument(
        "--validation-fraction",
        type=float,
        default=0.15,
        help="share of groups for validation when none are named (default: %(default)s)",
    )
    data.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="share of groups for testing when none are named (default: %(default)s)",
    )

    budget = parser.add_argument_group("budget and schedule")
    budget.add_argument(
        "--epochs",
        type=int,
        default=300,
        help="maximum number of epochs (default: %(default)s)",
    )
    budget.add_argument(
        "--minutes",
        type=float,
        help="stop after this many minutes of training; the learning-rate schedule "
        "follows whichever budget runs out first",
    )
    budget.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per step; each gives two views (default: %(default)s)",
    )
    budget.add_argument(
        "--learning-rate",
        type=float,
        default=0.001,
        help="peak Adam learning rate, after warm-up, cosine decay (default: %(default)s)",
    )
    budget.add_argument(
        "--weight-decay",
        type=float,
        default=1e-05,
        help="Adam weight decay (default: %(default)s)",
    )
    budget.add_argument(
        "--validate-every",
        type=int,
        default=10,
        help="epochs between validations (default: %(default)s)",
    )
    budget.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=2.0,
        help="minutes between last.pt saves (default: %(default)s)",
    )
    budget.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt (weights, optimiser, epoch, elapsed time)",
    )
    budget.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for split, initialisation and augmentation (default: %(default)s)",
    )

    net = parser.add_argument_group("model")
    net.add_argument(
        "--backbone",
        default="resnet18",
        help="backbone name: resnet18, resnet34, resnet50 (default: %(default)s)",
    )
    net.add_argument(
        "--small-input-stem",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="3x3 stride-1 stem without max-pool, for small tiles (slower; default: %(default)s)",
    )
    net.add_argument(
        "--backbone-weights",
        help="local state-dict file for the backbone, "
        "or 'torchvision' to download ImageNet weights",
    )
    net.add_argument(
        "--stages",
        nargs="+",
        type=int,
        default=[2, 3],
        choices=[1, 2, 3, 4],
        help="backbone stages whose feature maps are pooled into the descriptor, shallowest "
        "first; stages deeper than the last one are not built (default: %(default)s)",
    )
    net.add_argument(
        "--pooling",
        nargs="+",
        default=["spoc", "mac", "gem"],
        choices=["spoc", "mac", "gem", "attention"],
        help="global descriptors to combine (default: %(default)s)",
    )
    net.add_argument(
        "--input-size",
        type=int,
        default=64,
        help="side in pixels of the network input (default: %(default)s)",
    )
    net.add_argument(
        "--preload-size",
        type=int,
        default=128,
        help="side at which images are kept in memory and cropped from (default: %(default)s)",
    )
    net.add_argument(
        "--num-codebooks",
        type=int,
        default=8,
        help="M, sub-spaces (default: %(default)s)",
    )
    net.add_argument(
        "--codebook-size",
        type=int,
        default=16,
        help="K, codewords per sub-space, a power of two (default: %(default)s)",
    )
    net.add_argument(
        "--codeword-dim",
        type=int,
        default=16,
        help="d, dimensions per sub-space (default: %(default)s)",
    )
    net.add_argument(
        "--soft-quantization-scale",
        type=float,
        default=5.0,
        help="multiplies squared distances in the soft assignment softmax (default: %(default)s)",
    )
    net.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="CQC loss temperature dividing cosine similarities (default: %(default)s)",
    )
    net.add_argument(
        "--codeword-regularizer",
        type=float,
        default=1.0,
        help="weight of the codeword-usage regulariser, 0 to disable (default: %(default)s)",
    )
    net.add_argument(
        "--reset-dead-codewords",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="move codewords no code used in an epoch onto the data, during the first half of "
        "training (default: %(default)s)",
    )
    augment = parser.add_argument_group("augmentation (two views per image)")
    augment.add_argument(
        "--min-crop-scale",
        type=float,
        default=0.25,
        help="smallest random crop, as a share of the image area (default: %(default)s)",
    )
    augment.add_argument(
        "--rotation-degrees",
        type=float,
        default=0.0,
        help="random rotation by up to this many degrees either way, on top of the 90-degree "
        "turns and flips, borders reflected (default: %(default)s)",
    )
    augment.add_argument(
        "--colour-strength",
        type=float,
        default=0.1,
        help="brightness/contrast/saturation jitter; 0.4 is SimCLR's, which erases the colour "
        "cues that separate H&E tissue types (default: %(default)s)",
    )
    augment.add_argument(
        "--hed-strength",
        type=float,
        default=0.03,
        help="stain jitter: scale and shift of haematoxylin/eosin amounts (default: %(default)s)",
    )
    augment.add_argument(
        "--grayscale-p",
        type=float,
        default=0.0,
        help="probability of a grey view (default: %(default)s)",
    )
    net.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available), cpu, cuda or cuda:N (default: %(default)s)",
    )
    net.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="arithmetic of the network during training: auto uses bfloat16 mixed precision "
        "where the GPU or CPU computes it natively (AVX512-BF16, AMX), else float32; losses and "
        "codebooks are always float32 (default: %(default)s)",
    )
    net.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings; options not given take TrainConfig's defaults (a test checks)."""
    from indexer.learn.training import TrainConfig
    from model import AugmentationConfig

    return TrainConfig(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        minutes=args.minutes,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        seed=args.seed,
        temperature=args.temperature,
        codeword_regularizer=args.codeword_regularizer,
        reset_dead_codewords=args.reset_dead_codewords,
        augmentation=AugmentationConfig(
            min_crop_scale=args.min_crop_scale,
            rotation_degrees=args.rotation_degrees,
            colour_strength=args.colour_strength,
            hed_scale=args.hed_strength,
            hed_shift=args.hed_strength,
            grayscale_p=args.grayscale_p,
        ).as_dict(),
        backbone=args.backbone,
        small_input_stem=args.small_input_stem,
        stages=sorted(set(args.stages)),
        pooling=args.pooling,
        num_codebooks=args.num_codebooks,
        codebook_size=args.codebook_size,
        codeword_dim=args.codeword_dim,
        soft_quantization_scale=args.soft_quantization_scale,
        input_size=args.input_size,
        preload_size=args.preload_size,
        backbone_weights=args.backbone_weights,
        validation_groups=args.validation_groups,
        test_groups=args.test_groups,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        validate_every=args.validate_every,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    from indexer.learn.training import train

    final = train(config_from_args(args), resume=args.resume)
    print(f"model written to {final}")
    return 0
