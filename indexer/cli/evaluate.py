"""`histosearch evaluate`: retrieval metrics of a checkpoint and baselines on held-out groups."""

from __future__ import annotations

import argparse
import sys
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

--source features: a feature checkpoint (`histosearch train --source features`) on its archive
(--data: the .npy with its CSV, or the folder of .h5 / .pt files). Queries are rows of the test
groups (--test-groups-file, else the split the checkpoint recorded; groups it trained on are
refused), the archive every other group's rows. Rows: float exact, FAISS PQ and OPQ, SPQ codes
and SPQ + second stage (SQ8 re-rank of 100), per code length of --bits; columns P@10, mAP@10,
MV@5 (majority vote of the top 5) and recall of the float top 10. Run time: a code length other
than the checkpoint's trains an SPQ model with its settings on the archive rows (minutes on 100k
rows on 2 cores); --bits with the checkpoint's length alone skips that, and --queries,
--fit-rows and --limit bound the rest. Writes OUT/evaluation.json and OUT/evaluation.md.
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
        choices=["auto", "folder", "csv", "bracs", "crc-extended", "bach", "features"],
        help="archive layout (default: auto, as training reads it: csv for a file, else the "
        "public dataset layout every image follows, else class sub-folders); features: a "
        "feature archive and a feature checkpoint",
    )
    features = parser.add_argument_group("feature archives (--source features)")
    features.add_argument(
        "--test-groups", nargs="+", metavar="GROUP", help="query groups (patients)"
    )
    features.add_argument(
        "--test-groups-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a file of query groups, one a line (default: the checkpoint's recorded test groups)",
    )
    features.add_argument(
        "--label-column",
        default="label",
        metavar="COLUMN",
        help="CSV column of the label: relevant = same label (default: label)",
    )
    features.add_argument(
        "--group-column",
        default="group",
        metavar="COLUMN",
        help="CSV column of the group (patient) (default: group)",
    )
    features.add_argument(
        "--slide-column",
        default="slide_id",
        metavar="COLUMN",
        help="CSV column of the slide id (default: slide_id)",
    )
    features.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=[32, 64, 128],
        choices=[32, 64, 128],
        help="code lengths (default: 32 64 128); another than the checkpoint's trains SPQ",
    )
    features.add_argument(
        "--queries",
        type=int,
        default=2000,
        metavar="ROWS",
        help="query rows drawn from the test groups (default: 2000)",
    )
    features.add_argument(
        "--fit-rows",
        type=int,
        default=20_000,
        metavar="ROWS",
        help="archive rows the FAISS PQ / OPQ codebooks are fitted on (default: 20000)",
    )
    features.add_argument(
        "--limit", type=int, metavar="ROWS", help="read only the first ROWS rows of the archive"
    )
    features.add_argument(
        "--threads", type=int, default=2, help="CPU threads for torch and FAISS (default: 2)"
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
    if level_asked(args):
        return run_level_evaluation(args)
    if args.source == "features":
        return run_features(args)
    refused = [flag for flag, value in _feature_flags(args) if value]
    if refused:
        print(
            f"histosearch evaluate: {', '.join(refused)} apply to --source features only",
            file=sys.stderr,
        )
        return 2
    from indexer.evaluate.run import evaluate_checkpoint, markdown_table, write_report

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


def _feature_flags(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """Feature-only options, and whether each was given (differs from its default)."""
    return [
        ("--test-groups", args.test_groups is not None),
        ("--test-groups-file", bool(args.test_groups_file)),
        ("--label-column", args.label_column != "label"),
        ("--group-column", args.group_column != "group"),
        ("--slide-column", args.slide_column != "slide_id"),
        ("--bits", args.bits != [32, 64, 128]),
        ("--queries", args.queries != 2000),
        ("--fit-rows", args.fit_rows != 20_000),
        ("--limit", args.limit is not None),
        ("--threads", args.threads != 2),
    ]


def run_features(args: argparse.Namespace) -> int:
    """Evaluate a feature checkpoint on its archive; see `indexer.evaluate.feature_report`."""
    from indexer.evaluate.feature_report import (
        FeatureEvaluationSettings,
        evaluate_features,
        held_out_groups,
        markdown_report,
        write_feature_report,
    )
    from indexer.ingest.features import FeatureColumns
    from model.errors import HistosearchError

    refused = [flag for flag in ("--part", "--ks", "--batch-size") if _given(args, flag)]
    if refused:
        print(
            f"histosearch evaluate: {', '.join(refused)} do not apply to --source features",
            file=sys.stderr,
        )
        return 2
    try:
        settings = FeatureEvaluationSettings(
            checkpoint=args.checkpoint,
            data=args.data,
            columns=FeatureColumns(args.slide_column, args.label_column, args.group_column),
            test_groups=held_out_groups(args.test_groups, args.test_groups_file),
            bits=tuple(dict.fromkeys(args.bits)),
            max_queries=args.queries,
            fit_rows=args.fit_rows,
            limit=args.limit,
            threads=args.threads,
        )
        report = evaluate_features(settings)
    except (HistosearchError, ValueError) as error:
        print(f"histosearch evaluate: {error}", file=sys.stderr)
        return 2
    write_feature_report(report, args.out or args.checkpoint.parent)
    print(markdown_report(report))
    return 0


def _given(args: argparse.Namespace, flag: str) -> bool:
    defaults = {"--part": "test", "--ks": [1, 5, 10, 20, 50], "--batch-size": 64}
    return bool(getattr(args, flag.removeprefix("--").replace("-", "_")) != defaults[flag])
