"""Liveness, readiness and archive statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.deps import ClientDep, EngineDep, SettingsDep
from service.engine import SearchEngine
from service.errors import ErrorCode, ServiceError
from service.footprint import Footprint, index_footprint
from service.paths import without_paths
from service.routes.responses import SERVER_LIMITS, error_responses
from service.schemas import (
    BytesPerItem,
    HealthResponse,
    IndexKind,
    ReadyResponse,
    StageBytes,
    StatsResponse,
)
from service.settings import Settings

# Liveness and readiness are always open; /stats is a read, keyed where the settings say so.
router = APIRouter(tags=["system"])
read_router = APIRouter(tags=["system"])

UNSET = "(none)"


_HEAD: dict[int | str, dict[str, Any]] = {200: {"description": "As GET, without the body."}}


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """The process answers. Kept free of any locking or I/O so it stays fast under load."""
    return HealthResponse()


@router.head("/health", operation_id="health_head", response_class=Response, responses=_HEAD)
async def health_head() -> Response:
    """GET /health without the body (load balancers and monitors probe with HEAD)."""
    return JSONResponse(HealthResponse().model_dump())


@router.get(
    "/ready",
    response_model=ReadyResponse,
    response_model_exclude_none=True,
    responses=error_responses(503),
)
async def ready(request: Request) -> ReadyResponse:
    """Model and index are loaded and the server takes requests (503 while starting or stopping).

    Open to everyone: the item count is left out where reads need the key."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or getattr(request.app.state, "stopping", False):
        raise ServiceError(503, ErrorCode.NOT_READY, "the model and index are not loaded")
    settings: Settings = request.app.state.settings
    if settings.require_key_for_search:
        return ReadyResponse()
    dim = None if engine.features is None else engine.features.dim
    return ReadyResponse(items=len(engine.index), index_kind=_kind(engine), feature_dim=dim)


@router.head(
    "/ready",
    operation_id="ready_head",
    response_class=Response,
    responses={**_HEAD, **error_responses(503)},
)
async def ready_head(request: Request) -> Response:
    """GET /ready without the body."""
    return JSONResponse((await ready(request)).model_dump(exclude_none=True))


@read_router.get("/stats", response_model=StatsResponse, responses=error_responses(*SERVER_LIMITS))
async def stats(engine: EngineDep, settings: SettingsDep, client: ClientDep) -> StatsResponse:
    index_stats = await engine.offload(engine.index.stats, client=client)
    footprint = await engine.offload(
        lambda: index_footprint(
            engine.index.directory,
            index_stats.items,
            index_stats.memory_bytes,
            None
            if index_stats.second_stage is None
            else index_stats.second_stage["unsaved_ram_bytes"],
        ),
        client=client,
    )
    card = engine.card
    features = engine.features
    return StatsResponse(
        items=index_stats.items,
        index_kind=_kind(engine),
        feature_dim=None if features is None else features.dim,
        feature_model=None if features is None else features.feature_model,
        bytes_per_item=_bytes_per_item(footprint),
        code_bytes=index_stats.code_bytes,
        bits=card.bits,
        descriptor_dim=card.descriptor_dim,
        max_k=settings.max_k,
        labels=_named_counts(index_stats.labels),
        datasets=_named_counts(index_stats.datasets),
        tombstones=index_stats.tombstones,
        unsaved_changes=index_stats.unsaved_changes,
        memory_bytes=index_stats.memory_bytes,
        codebook_fingerprint=index_stats.codebook_fingerprint,
        device=str(engine.device),
        # The card records the training run's data and output folders: names only over HTTP.
        model_card=without_paths(card.model_dump(mode="json")),
    )


def _kind(engine: SearchEngine) -> IndexKind:
    return "images" if engine.features is None else "features"


def _bytes_per_item(footprint: Footprint) -> BytesPerItem:
    return BytesPerItem(
        ram=round(footprint.ram, 2),
        disk=round(footprint.disk, 2),
        stages=[
            StageBytes(
                stage=stage.name,
                ram=round(stage.ram, 2),
                disk=round(stage.disk, 2),
                disk_parts={part: round(size, 2) for part, size in stage.disk_parts.items()},
            )
            for stage in footprint.stages
        ],
        fixed_disk_bytes=footprint.fixed_disk_bytes,
    )


def _named_counts(counts: dict[str | None, int]) -> dict[str, int]:
    return {UNSET if name is None else name: count for name, count in counts.items()}
