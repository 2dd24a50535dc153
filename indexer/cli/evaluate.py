"""`histosearch evaluate`: retrieval metrics of a checkpoint and baselines on held-out groups."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from indexer.cli.slide_queries import add_level_arguments, level_asked, run_level_evaluation

DESCRIPTION = """\
Evaluate a trained checkpoint on the groups it was neither trained nor selected on.

Every image of the chosen part is a query against all others, never counting hits from its own
group. Methods: the PQ codes searched by the index's own search (asymmetric distance, queries
stay float: the figures the service delivers), the float descriptor, the checkpoint's own
backbone features pooled without the head (the ceiling: each method's share of its P@10 is
reported), an RGB colour histogram, and the same backbone with random weights.
Metrics: precision@k, mAP@k, majority-vote top-k accuracy, and how often a query's own group
mate is ranked first (near-duplicate retrieval).

Writes OUT/evaluation.json, OUT/evaluation.md (table) and OUT/precision_at_k.png.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure retrieval quality on held-out groups",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="model.pt written by `histosearch train` (required)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="the image folder or CSV manifest the model was trained from "
        "(or another labelled set with --part all)",
    )
    parser.add_argument(
        "--source",
        default="auto",
        choices=["auto", "folder", "csv", "bracs", "crc-extended", "bach"],
        help="archive layout (default: auto, as training reads it: csv for a file, else the "
        "public dataset layout every image follows, else class sub-folders)",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for the results (default: the checkpoint's folder)"
    )
    parser.add_argument(
        "--part",
        default="test",
        choices=["test", "validation", "train", "all"],
        help="which groups of the checkpoint's recorded split to evaluate (default: test)",
    )
    parser.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=[1, 5, 10, 20, 50],
        help="cut-offs k for the metrics (default: 1 5 10 20 50)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default: 64)"
    )
    add_level_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from indexer.evaluate.run import evaluate_checkpoint, markdown_table, write_report

    if level_asked(args):
        return run_level_evaluation(args)
    if args.checkpoint is None or args.data is None:
        print("histosearch evaluate: --checkpoint and --data are required (without --level)")
        return 2
    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.part,
        args.ks,
        args.device,
        args.batch_size,
        source=args.source,
    )
    out = args.out or args.checkpoint.parent
    k = 10 if 10 in args.ks else max(args.ks)
    write_report(report, out, k)
    print(markdown_table(report, k))
    return 0
