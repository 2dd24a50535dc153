"""Liveness, readiness and archive statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import EngineDep, ReadAccess, SettingsDep
from service.errors import ServiceError
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse, StatsResponse

router = APIRouter(tags=["system"])

UNSET = "(none)"


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


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    dependencies=[ReadAccess],
)
async def stats(engine: EngineDep, settings: SettingsDep) -> StatsResponse:
    index_stats = await engine.offload(engine.index.stats)
    card = engine.card
    return StatsResponse(
        items=index_stats.items,
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
        model_card=card.model_dump(mode="json"),
    )


def _named_counts(counts: dict[str | None, int]) -> dict[str, int]:
    return {UNSET if name is None else name: count for name, count in counts.items()}
