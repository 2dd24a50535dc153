"""The FastAPI application factory: ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine import SearchEngine
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.routes import images, search, slides, system
from service.settings import Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("service") / "static"))

# Multipart framing (boundaries, part headers, form fields) on top of the file bytes themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# The page loads only its own files; thumbnails of query images are shown from blob: URLs.
_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def load_engine(settings: Settings) -> SearchEngine:
    """Open the index and the model its codes came from (blocking; run once at start-up)."""
    from indexer.index.opening import open_index
    from model import select_device

    device = select_device(settings.device)
    if device.type == "cpu":
        share_cores_between_workers(settings.workers)
    # Checks once that the index has its model.pt, and that card and codebooks agree with it.
    opened = open_index(settings.index_dir, device)
    index, model, card = opened.index, opened.model, opened.model.card
    logger.info(
        "loaded index %s (%d items, %d-bit codes) and model %s on %s",
        settings.index_dir,
        len(index),
        card.bits,
        card.backbone,
        device,
    )
    return SearchEngine(
        model,
        index,
        device,
        workers=settings.workers,
        max_pending=settings.max_pending,
        max_image_pixels=settings.max_image_pixels,
        snapshot_every_changes=settings.snapshot_every_changes,
        snapshot_every_seconds=settings.snapshot_every_seconds,
    )


def share_cores_between_workers(workers: int) -> None:
    """Give each concurrent CNN forward an equal share of the cores, so they do not oversubscribe.

    Also shorten the interpreter's thread switch interval: the event loop then gets the GIL back
    from busy worker threads quickly, which keeps /health and new connections fast under load.
    """
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    sys.setswitchinterval(0.001)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.stopping = False
    app.state.engine = await run_in_threadpool(app.state.engine_loader, settings)
    try:
        yield
    finally:
        app.state.stopping = True
        engine: SearchEngine = app.state.engine
        app.state.engine = None
        await run_in_threadpool(engine.close)
        logger.info("index closed")


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs each request through a
    task group and a body stream, which cost more per search than the rest of the HTTP handling.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Swagger UI loads its assets from a CDN, so the strict policy would break /docs.
        strict = not str(scope["path"]).startswith(("/docs", "/redoc"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if strict:
                    headers.setdefault("Content-Security-Policy", _CONTENT_SECURITY_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: Settings | None = None,
    engine_loader: Callable[[Settings], SearchEngine] = load_engine,
) -> FastAPI:
    """Build the app; settings come from ``HISTOSEARCH_*`` variables unless given.

    ``engine_loader`` opens the model and index at start-up (service/ray_serve.py passes one
    whose engine embeds and searches on Ray Serve deployments).
    """
    settings = settings or Settings()  # type: ignore[call-arg]  # index_dir comes from the env
    logging.getLogger("service").setLevel(settings.log_level)
    app = FastAPI(
        title="histosearch",
        summary="Content-based retrieval for H&E histopathology images.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine_loader = engine_loader
    app.state.engine = None
    install_error_handlers(app)
    # Bodies are capped while they stream in, before multipart parsing spools them to disk.
    # Added first, so it sits innermost and its refusals still get the headers added below.
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=body_limit_for(settings),
        note=f" (files: at most {settings.max_upload_bytes} bytes each)",
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _include_routers(app, settings)
    _serve_page(app)
    return app


def body_limit_for(settings: Settings) -> Callable[[str], int]:
    """Largest body each path may send: one file for /search, a batch for /index, else little."""
    single_file = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    batch = settings.max_upload_bytes * settings.max_files_per_request + MULTIPART_OVERHEAD_BYTES

    def limit_for(path: str) -> int:
        if path == "/search":
            return single_file
        if path == "/index":
            return batch
        return MULTIPART_OVERHEAD_BYTES

    return limit_for


def _include_routers(app: FastAPI, settings: Settings) -> None:
    app.include_router(system.router)
    app.include_router(slides.router)
    app.include_router(search.router, form_limits={"max_files": 1, "max_fields": 16})
    app.include_router(
        images.router,
        form_limits={"max_files": settings.max_files_per_request, "max_fields": 16},
    )


def _serve_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
