"""Bearer-key checks. Writes stay closed unless a key is configured: no key never means open."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ErrorCode, ServiceError, error_response

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="histosearch"'}

NO_KEY_CONFIGURED = (
    "this server has no API key configured, so writes are disabled; set HISTOSEARCH_API_KEY "
    "(or HISTOSEARCH_API_KEY_FILE pointing at a file holding the key) and restart the server"
)


def check_bearer_key(
    expected_key: str | None, credentials: HTTPAuthorizationCredentials | None
) -> None:
    """Raise 403 when no key is configured, 401 when the request's key is missing or wrong."""
    if expected_key is None:
        raise ServiceError(403, ErrorCode.WRITES_DISABLED, NO_KEY_CONFIGURED)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ServiceError(
            401,
            ErrorCode.MISSING_API_KEY,
            "send the API key as `Authorization: Bearer <key>`",
            headers=_CHALLENGE,
        )
    # Constant-time comparison: response timing must not reveal how much of a guess matched.
    if not hmac.compare_digest(credentials.credentials.encode(), expected_key.encode()):
        raise ServiceError(
            401, ErrorCode.INVALID_API_KEY, "the API key is not valid", headers=_CHALLENGE
        )


def credentials_of(scope: Scope) -> HTTPAuthorizationCredentials | None:
    """The ``Authorization`` header as FastAPI's bearer scheme reads it (None when absent)."""
    scheme, value = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
    if not scheme or not value:
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=value)


class KeyGateMiddleware:
    """Refuses a keyed operation without the right key before a byte of its body is read.

    The routes' own key dependencies (which also document the scheme in OpenAPI) only run once
    FastAPI has parsed the body: without this gate an anonymous client could make the server
    spool a batch of uploads, and a malformed body would be answered 422 before the 401.
    """

    def __init__(
        self, app: ASGIApp, routes: list[BaseRoute], expected_key: Callable[[], str | None]
    ) -> None:
        self.app = app
        self.routes = routes
        self.expected_key = expected_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            route.matches(scope)[0] is Match.FULL for route in self.routes
        ):
            try:
                check_bearer_key(self.expected_key(), credentials_of(scope))
            except ServiceError as error:
                response = error_response(
                    error.status_code, error.code, error.detail, error.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
