"""Slide and case queries of `histosearch search` (``--slide``, ``--group``) and the slide-level
evaluation of `histosearch evaluate` (``--level slide|group``): their options and handlers, which
`indexer.cli.search` and `indexer.cli.evaluate` hand over to when these options are given."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "median-min", "mean-max", "vote")


# ---- histosearch search --slide / --group ------------------------------------------------------


def add_slide_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "slide and case queries",
        "rank the archive's slides (or cases) like an indexed slide or every slide of a group; "
        "the query's own group is left out",
    )
    query = group.add_mutually_exclusive_group()
    query.add_argument("--slide", metavar="ID", help="an indexed slide as the query (no IMAGE)")
    query.add_argument("--group", metavar="ID", help="every slide of this group (patient)")
    group.add_argument(
        "--group-by",
        choices=["slide", "group"],
        default="slide",
        help="rank slides, or cases as one (default: slide)",
    )
    group.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default=None,
        help="how item matches rank slides (default: mean-max, chosen on validation patients)",
    )
    group.add_argument(
        "--mosaic", type=int, default=24, help="query items searched at most (default: 24)"
    )
    group.add_argument(
        "--include-own-group", action="store_true", help="keep the query's own group in the answer"
    )


def slide_search_asked(args: argparse.Namespace) -> bool:
    return getattr(args, "slide", None) is not None or getattr(args, "group", None) is not None


def run_slide_search(args: argparse.Namespace) -> int:
    """Print the ranked slides or cases with their evidence items (or JSON)."""
    from indexer.index.errors import IndexDirectoryError, IndexInputError
    from indexer.index.shards import open_index_directory
    from indexer.index.slide_archive import (
        DEFAULT_AGGREGATION,
        IndexSlides,
        SlideSearchRequest,
        search_slides,
    )
    from indexer.index.slide_search import Aggregation

    other = [
        name
        for name in ("image", "vector", "vectors", "item")
        if getattr(args, name, None) is not None
    ]
    if other:
        log.error(
            "--slide and --group are queries of their own: give no %s with them",
            " or ".join("IMAGE" if name == "image" else f"--{name}" for name in other),
        )
        return 2
    if args.label is not None or args.dataset is not None:
        log.error("--label and --dataset do not apply to a slide or case query")
        return 2
    if args.k < 1 or args.mosaic < 1:
        log.error("-k and --mosaic must be at least 1")
        return 2
    exclude = "" if args.include_own_group else args.exclude_group
    try:
        request = SlideSearchRequest(
            slide_id=args.slide,
            group=args.group,
            aggregation=Aggregation(args.aggregation) if args.aggregation else DEFAULT_AGGREGATION,
            group_by=args.group_by,
            exclude_group=exclude,
            mosaic=args.mosaic,
        )
        with open_index_directory(args.index) as index:
            slides = IndexSlides.of_index(index)
            answer = search_slides(slides, index, request, args.k)
            records = {
                item.item_id: index.get(item.item_id)
                for target in answer.ranked
                for item in target.evidence
            }
            labels = [slides.target_label(t.target, request.group_by) for t in answer.ranked]
    except (IndexDirectoryError, IndexInputError, LookupError, ValueError) as error:
        log.error("%s", error)
        return 2
    if args.json:
        print(json.dumps(_answer_json(request, answer, records, labels), indent=2))
        return 0
    what = args.slide if args.slide is not None else f"group {args.group}"
    print(
        f"query {what}: {answer.query_items} items ({answer.mosaic_items} searched), "
        f"{request.aggregation.value}, left out: {answer.excluded_group or 'nothing'}"
    )
    width = max([len("label"), *(len(label or "-") for label in labels)])
    print(
        f"{'rank':>4}  {'score':>8}  {request.group_by:<24} {'group':<18} {'label':<{width}}  "
        "evidence (item ids)"
    )
    for rank, (target, label) in enumerate(zip(answer.ranked, labels, strict=True), start=1):
        evidence = ", ".join(str(item.item_id) for item in target.evidence)
        print(
            f"{rank:>4}  {target.score:8.4f}  {target.target:<24} {target.group:<18} "
            f"{label or '-':<{width}}  {evidence}"
        )
    return 0


def _answer_json(
    request: Any, answer: Any, records: dict[int, Any], labels: list[str | None]
) -> dict[str, Any]:
    def evidence(item: Any) -> dict[str, Any]:
        record = records.get(item.item_id)
        return {
            "id": item.item_id,
            "score": item.score,
            "query_item": item.query_item,
            "source": None if record is None else record.display_source,
            "label": None if record is None else record.label,
            "tile": None if record is None or record.tile is None else list(record.tile),
        }

    return {
        "query": {
            "slide": request.slide_id,
            "group": request.group,
            "items": answer.query_items,
            "mosaic_items": answer.mosaic_items,
            "excluded_group": answer.excluded_group,
        },
        "aggregation": request.aggregation.value,
        "group_by": request.group_by,
        "results": [
            {
                "rank": rank,
                "id": target.target,
                "group": target.group,
                "label": label,
                "score": target.score,
                "evidence": [evidence(item) for item in target.evidence],
            }
            for rank, (target, label) in enumerate(zip(answer.ranked, labels, strict=True), 1)
        ],
    }


# ---- histosearch evaluate --level slide|group --------------------------------------------------


def add_level_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "slide- and case-level evaluation",
        "with --level: rank slides (or cases) of the test groups, each leaving its own group "
        "out; on an index (--index, its codes) or a slide-feature folder (--data, float vectors "
        "and PQ codes of each --bits); test groups from --test-groups / --test-groups-file, else "
        "the test patients the index's feature model recorded, else a seeded patient split "
        "(--validation-fraction, --test-fraction, --seed); writes "
        "OUT/slide_evaluation_<level>.json and .md",
    )
    group.add_argument("--level", choices=["slide", "group"], help="evaluate slide or case search")
    group.add_argument("--index", type=Path, help="an index directory to evaluate (--level)")
    group.add_argument(
        "--validation-fraction",
        type=float,
        default=0.15,
        help="patients for validation in the split (default: 0.15)",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="patients evaluated in the split (default: 0.2)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")


def level_asked(args: argparse.Namespace) -> bool:
    return getattr(args, "level", None) is not None


def run_level_evaluation(args: argparse.Namespace) -> int:
    from indexer.evaluate.slide_index import (
        evaluate_feature_folder,
        evaluate_index,
        markdown_table,
        write_slide_report,
    )
    from indexer.index.errors import IndexDirectoryError
    from indexer.index.shards import open_index_directory
    from indexer.index.slide_archive import IndexSlides

    if (args.index is None) == (args.data is None):
        log.error("--level evaluates either --index DIR or --data FEATURE_FOLDER (one of them)")
        return 2
    try:
        if args.data is not None:
            evaluation = evaluate_feature_folder(
                args.data,
                args.level,
                bits=tuple(dict.fromkeys(args.bits)),
                seed=args.seed,
                validation_fraction=args.validation_fraction,
                test_fraction=args.test_fraction,
            )
        else:
            with open_index_directory(args.index) as index:
                groups = IndexSlides.of_index(index).catalog.groups
                test_groups = _test_groups(args, groups, index.card)
                evaluation = evaluate_index(index, test_groups, args.level)
    except (IndexDirectoryError, OSError, ValueError, KeyError) as error:
        log.error("%s", error)
        return 2
    out = args.out or (args.index if args.index is not None else Path("."))
    json_path, _ = write_slide_report(evaluation, out)
    print(markdown_table(evaluation))
    log.info("wrote %s", json_path)
    return 0


def _test_groups(
    args: argparse.Namespace, groups: tuple[str, ...], card: dict[str, Any]
) -> list[str]:
    """--test-groups / --test-groups-file; else the test patients the index's feature model
    recorded (never trained on); else a seeded patient split of the index's groups."""
    from indexer.evaluate.feature_report import held_out_groups

    named = held_out_groups(args.test_groups, args.test_groups_file)
    if named is not None:
        return list(named)
    recorded = (card.get("extra") or {}).get("feature_run", {}).get("split", {}).get("test")
    if recorded:
        log.info("test groups: the %d recorded by the index's feature model", len(recorded))
        return [str(group) for group in recorded]
    from indexer.learn.splits import patient_split

    split = patient_split(groups, args.validation_fraction, args.test_fraction, args.seed)
    return list(split.test)
