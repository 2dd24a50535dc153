"""`histosearch serve`: the search API and web page over one index directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.connections import ConnectionPolicy
    from service.settings import Settings

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
    from service.connections import guarded_protocol
    from service.settings import Settings

    try:
        settings = Settings(**_overrides(args))
    except ValidationError as error:
        logger.error("invalid settings:\n%s", error)
        return 2
    if args.ray:
        return _serve_on_ray(settings, args)
    logger.info("serving %s on http://%s:%d", settings.index_dir, args.host, args.port)
    raise_open_file_limit(settings.max_connections)
    # One worker process: the index is one writer's files; concurrency comes from the thread pool.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        # Header and body deadlines and the connection caps (service.connections); uvicorn's own
        # limit_concurrency is left off: it counts stalled connections and would answer /health
        # 503 while they last.
        http=guarded_protocol(connection_policy(settings)),
        timeout_keep_alive=settings.keep_alive_seconds,
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


def connection_policy(settings: Settings) -> ConnectionPolicy:
    from service.connections import ConnectionPolicy

    return ConnectionPolicy(
        header_timeout=settings.header_timeout_seconds,
        body_min_rate=settings.body_min_bytes_per_second,
        body_grace=settings.body_grace_seconds,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
    )


# Descriptors beyond the connections: the index's files, SQLite, spooled uploads, logs.
_SPARE_FILE_DESCRIPTORS = 256


def raise_open_file_limit(max_connections: int) -> None:
    """Lift the soft descriptor limit towards the hard one so every allowed connection fits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + _SPARE_FILE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if hard != resource.RLIM_INFINITY and hard < wanted:
        logger.warning(
            "the open-file limit (%d) is below HISTOSEARCH_MAX_CONNECTIONS + %d; "
            "raise it (ulimit -n) or lower the setting",
            hard,
            _SPARE_FILE_DESCRIPTORS,
        )
