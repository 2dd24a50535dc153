"""`histosearch backbones`: the backbones a model card can name, and what each needs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

TORCHVISION_ROWS = (
    ("resnet18", "torchvision ResNet-18", 512, "11.7M"),
    ("resnet34", "torchvision ResNet-34", 512, "21.8M"),
    ("resnet50", "torchvision ResNet-50", 2048, "25.6M"),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backbones",
        help="list the backbone presets (foundation models and ResNets)",
        description="Backbone presets: architecture, embedding size, input size, normalisation, "
        "licence and where the weights come from. Any timm architecture can also be named as "
        "timm:<model_name>. Weights are never downloaded unless asked for: pass the file you "
        "downloaded with `histosearch train --backbone-weights FILE`.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def rows() -> list[dict[str, Any]]:
    from model.card import IMAGENET_MEAN, IMAGENET_STD
    from model.presets import PRESETS

    listed: list[dict[str, Any]] = []
    for preset in PRESETS.values():
        row = asdict(preset)
        row["timm_kwargs"] = dict(preset.timm_kwargs)
        row["dynamic_input_size"] = bool(preset.timm_kwargs.get("dynamic_img_size", False))
        listed.append(row)
    for name, title, embedding, parameters in TORCHVISION_ROWS:
        listed.append(
            {
                "name": name,
                "title": title,
                "architecture": f"torchvision {name}",
                "embedding_dim": embedding,
                "input_size": 224,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
                "parameters": parameters,
                "licence": "BSD-3-Clause (torchvision ImageNet weights)",
                "weights": "torchvision (--backbone-weights torchvision) or a local file",
                "dynamic_input_size": True,
            }
        )
    return listed


def run(args: argparse.Namespace) -> int:
    listed = rows()
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    print(
        f"{'backbone':<14} {'architecture':<30} {'params':>6} {'embed':>5} {'input':>9} mean / std"
    )
    for row in listed:
        size = f"{row['input_size']}px" + ("" if row["dynamic_input_size"] else " only")
        normalisation = (
            "/".join(f"{value:.3g}" for value in row["mean"])
            + "  "
            + "/".join(f"{value:.3g}" for value in row["std"])
        )
        print(
            f"{row['name']:<14} {row['architecture']:<30} {row['parameters']:>6} "
            f"{row['embedding_dim']:>5} {size:>9} {normalisation}"
        )
        print(f"{'':<14} licence: {row['licence']}")
        print(
            f"{'':<14} weights: {row['weights']}" + (f" ({row['hub']})" if row.get("hub") else "")
        )
        if row.get("note"):
            print(f"{'':<14} note:    {row['note']}")
    print("Also: timm:<model_name> for any timm architecture (ViT, Swin, ConvNeXt, ResNet).")
    return 0
