"""`histosearch demo`: the demo archive, a model and an index of it, served on localhost:8000."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from indexer.cli.prepare import add_prepare_arguments, prepare_from_args

REPO_ROOT = Path(__file__).resolve().parents[2]

DESCRIPTION = """\
Everything at once, on the demo archive shipped in demo/archive (240 Kather 2016 colorectal tiles,
CC BY 4.0): train a model if var/demo has none, index the archive, then serve the API and the web
page. Later runs reuse the model and the index and start serving within seconds.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="prepare and serve the demo archive (what `make run` does)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_prepare_arguments(
        parser,
        {"archive": REPO_ROOT / "demo" / "archive", "workdir": REPO_ROOT / "var" / "demo"},
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    parser.add_argument(
        "--no-serve", action="store_true", help="stop after preparing the model and the index"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    status = prepare_from_args(args)
    if status != 0 or args.no_serve:
        return status
    # `serve` belongs to the service package: reach it through the command registry, by name.
    from indexer.cli import main

    serve_argv = [
        "--log-level",
        args.log_level,
        "serve",
        "--index",
        str(args.index or args.workdir / "index"),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if args.device is not None:
        serve_argv += ["--device", args.device]
    return main(serve_argv)
