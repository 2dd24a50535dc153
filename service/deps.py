"""Typed dependencies: routes ask for what they need and tests can override any of it.

Every dependency is ``async def`` although none awaits anything: FastAPI runs a plain ``def``
dependency in its thread pool, and the hop there and back cost about a millisecond per dependency
per request on a busy two-core host, more than all of the HTTP handling together.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import check_bearer_key
from service.engine import SearchEngine
from service.errors import ErrorCode, ServiceError
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The key from HISTOSEARCH_API_KEY(_FILE).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_engine(request: Request) -> SearchEngine:
    engine: SearchEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ServiceError(503, ErrorCode.NOT_READY, "the model and index are not loaded yet")
    return engine


EngineDep = Annotated[SearchEngine, Depends(get_engine)]


async def require_write_key(settings: SettingsDep, credentials: Credentials) -> None:
    check_bearer_key(settings.resolved_api_key, credentials)


async def require_read_key(settings: SettingsDep, credentials: Credentials) -> None:
    """Added to the read routes only when HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH is set, so OpenAPI
    shows the bearer scheme on exactly the operations that need it."""
    check_bearer_key(settings.resolved_api_key, credentials)


def client_address(request: Request) -> str:
    """Who a request counts against for fairness: the peer address uvicorn reports (the
    forwarded one behind a trusted proxy)."""
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


async def get_client(request: Request) -> str:
    return client_address(request)


ClientDep = Annotated[str, Depends(get_client)]


WriteAccess = Depends(require_write_key)
ReadAccess = Depends(require_read_key)
