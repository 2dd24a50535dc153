"""The FastAPI application factory: ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyGateMiddleware
from service.deps import ReadAccess
from service.engine import SearchEngine, engine_from_settings
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.methods import AllowedMethodsMiddleware
from service.routes import images, search, slides, system
from service.routes.images import MAX_ITEM_ID
from service.routes.responses import error_responses
from service.settings import Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("service") / "static"))
# Built by scripts/vendor-viewer from viewer/package-lock.json, never committed.
VIEWER_SCRIPT = Path("vendor/openseadragon/openseadragon.min.js")
# Swagger UI and ReDoc, as the fastapi-offline package ships them: /docs works without any CDN
# (hospital networks are often air-gapped).
DOCS_ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))

# Multipart framing (boundaries, part headers, form fields) on top of the file bytes themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# The page loads only its own files; thumbnails of query images are shown from blob: URLs.
_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# The API documentation pages: scripts only from this server too, but Swagger UI and ReDoc set
# inline styles and ReDoc draws with blob: workers.
_DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")


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
    return engine_from_settings(settings, model, index, device)


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
        is_docs = str(scope["path"]) in _DOCS_PATHS
        policy = _DOCS_CONTENT_SECURITY_POLICY if is_docs else _CONTENT_SECURITY_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Content-Security-Policy", policy)
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
        docs_url=None,
        redoc_url=None,
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
    # OPTIONS and 405 answers list every method the path serves (outside the body limit: an
    # OPTIONS has no body worth reading).
    keyed_routes: list[BaseRoute] = []
    app.add_middleware(
        KeyGateMiddleware, routes=keyed_routes, expected_key=lambda: settings.resolved_api_key
    )
    served_routes: list[BaseRoute] = []
    app.add_middleware(AllowedMethodsMiddleware, routes=served_routes)
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    routers = _include_routers(app, settings)
    _describe_configured_limits(app, settings)
    _serve_docs(app)
    _serve_page(app)
    keyed_routers = [images.write_router]
    if settings.require_key_for_search:
        keyed_routers += [system.read_router, slides.router, search.router, images.read_router]
    keyed_routes.extend(route for router in keyed_routers for route in router.routes)
    served_routes.extend(route for router in routers for route in router.routes)
    served_routes.extend(route for route in app.router.routes if isinstance(route, Route | Mount))
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


def _include_routers(app: FastAPI, settings: Settings) -> list[APIRouter]:
    """Reads get the bearer key as a dependency only when the settings require it, so the OpenAPI
    description marks exactly the operations that need a key."""
    read_keyed = settings.require_key_for_search
    read_options: dict[str, Any] = {
        "dependencies": [ReadAccess] if read_keyed else [],
        "responses": error_responses(401, 403) if read_keyed else {},
    }
    app.include_router(system.router)
    app.include_router(system.read_router, **read_options)
    app.include_router(slides.router, **read_options)
    # A search declares 12 fields (an image, an item or a slide region, k, filters, mpp).
    app.include_router(
        search.router, form_limits={"max_files": 1, "max_fields": 32}, **read_options
    )
    app.include_router(images.read_router, **read_options)
    app.include_router(
        images.write_router,
        form_limits={"max_files": settings.max_files_per_request, "max_fields": 16},
    )
    return [
        system.router,
        system.read_router,
        slides.router,
        search.router,
        images.read_router,
        images.write_router,
    ]


def _describe_configured_limits(app: FastAPI, settings: Settings) -> None:
    """Put the limits the settings choose into the OpenAPI description (the routes are declared
    before any settings exist): the largest k, the most files per POST /index; and the bounds
    FastAPI does not write for form fields: no empty file, exact item ids."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_schema()
        _form_property(schema, "/search", "k")["maximum"] = settings.max_k
        _form_property(schema, "/index", "images")["maxItems"] = settings.max_files_per_request
        for path in ("/search", "/index"):
            _without_null_alternatives(_form_schema(schema, path))
        # An empty file is refused (400 empty_file): say so, so no client sends one.
        _form_property(schema, "/search", "image")["minLength"] = 1
        _form_property(schema, "/index", "images")["items"]["minLength"] = 1
        # The form's bound comes out as the float 2**63, one past the largest id: exact here.
        _form_property(schema, "/search", "item_id").update(minimum=0, maximum=MAX_ITEM_ID)
        engine: SearchEngine | None = app.state.engine
        features = engine is not None and engine.features is not None
        _form_schema(schema, "/search")["oneOf"] = search.query_kinds(feature_index=features)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _without_null_alternatives(form: dict[str, Any]) -> None:
    """A multipart field cannot be null, only absent: `X | None` fields are described as `X`
    (not required), so that no client sends the text "null" for a number."""
    for name, prop in form["properties"].items():
        options = prop.get("anyOf")
        if options is None:
            continue
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            rest = {key: value for key, value in prop.items() if key != "anyOf"}
            form["properties"][name] = {**kept[0], **rest}


def _form_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    form: dict[str, Any] = schema["components"]["schemas"][
        body["schema"]["$ref"].rsplit("/", 1)[-1]
    ]
    return form


def _form_property(schema: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    form_property: dict[str, Any] = _form_schema(schema, path)["properties"][name]
    return form_property


def _serve_docs(app: FastAPI) -> None:
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs" / "swagger.html")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs" / "redoc.html")


def missing_viewer(static_dir: Path) -> str | None:
    """What to do when the slide viewer's OpenSeadragon is not built, or None when it is."""
    if (static_dir / VIEWER_SCRIPT).is_file():
        return None
    return (
        f"the slide viewer is not built ({static_dir / VIEWER_SCRIPT} is missing): the search "
        "page works, and slide pages show a slide's details without the viewer; build it with "
        "`make vendor-viewer` (scripts/vendor-viewer: npm ci of viewer/package-lock.json)"
    )


def _serve_page(app: FastAPI) -> None:
    # Serving without the viewer is allowed (it is optional for indexes of plain images);
    # the log says how to build it.
    problem = missing_viewer(STATIC_DIR)
    if problem is not None:
        logger.warning(problem)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Browsers ask for /favicon.ico whatever the page links; answer with the page's own icon.
    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
