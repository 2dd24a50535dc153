"""Liveness, readiness and archive statistics."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from service.deps import EngineDep
from service.errors import ServiceError
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse, StatsResponse

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """The process answers. Kept free of any locking or I/O so it stays fast under load."""
    return HealthResponse()


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> ReadyResponse:
    """Model and index are loaded and the server takes requests (503 while starting or stopping)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or getattr(request.app.state, "stopping", False):
        raise ServiceError(503, "not_ready", "the model and index are not loaded")
    return ReadyResponse(items=len(engine.index))


@router.get("/stats", response_model=StatsResponse, responses={503: {"model": ErrorResponse}})
async def stats(engine: EngineDep) -> StatsResponse:
    index_stats = await engine.offload(engine.index.stats)
    card = engine.card
    return StatsResponse(
        items=len(engine.index),
        code_bytes=card.code_bytes,
        bits=card.bits,
        descriptor_dim=card.descriptor_dim,
        device=str(engine.device),
        model_card=card.model_dump(mode="json"),
        index=_as_dict(index_stats),
    )


def _as_dict(value: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        result: dict[str, Any] = dump(mode="json")
        return result
    return {"value": str(value)}
