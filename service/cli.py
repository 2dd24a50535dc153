"""`histosearch serve`: the search API and web page over one index directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the search API and web page over an index",
        description=(
            "Serve /search, /index, /images and the web page at /. Every other setting is read "
            "from HISTOSEARCH_* environment variables (see the README); flags given here win."
        ),
    )
    parser.add_argument("--index", type=Path, help="index directory (HISTOSEARCH_INDEX_DIR)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="HISTOSEARCH_DEVICE")
    parser.add_argument("--workers", type=int, help="threads for decode/embed/search")
    parser.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="serve a sharded index on Ray Serve: auto (RAY_ADDRESS, a running local cluster, or "
        "a new one) or the cluster's address; needs the `ray` extra (default: this process)",
    )
    parser.add_argument(
        "--ray-embedders", type=int, help="embedder replicas (default: one per GPU, else CPUs / 4)"
    )
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {"index_dir": args.index, "device": args.device, "workers": args.workers}
    return {name: value for name, value in given.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    try:
        settings = Settings(**_overrides(args))
    except ValidationError as error:
        logger.error("invalid settings:\n%s", error)
        return 2
    if args.ray:
        return _serve_on_ray(settings, args)
    logger.info("serving %s on http://%s:%d", settings.index_dir, args.host, args.port)
    # One worker process: the index is one writer's files; concurrency comes from the thread pool.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0


def _serve_on_ray(settings: Any, args: argparse.Namespace) -> int:
    from indexer.index.store import IndexDirectoryError
    from model.errors import HistosearchError

    try:
        import ray  # noqa: F401

        from service.ray_serve import serve_on_ray
    except ImportError as error:
        logger.error("--ray needs the `ray` extra (pip install '.[ray]'): %s", error)
        return 2
    try:
        serve_on_ray(settings, args.ray, args.host, args.port, args.ray_embedders)
    except (HistosearchError, IndexDirectoryError) as error:
        logger.error("%s", error)
        return 2
    return 0
