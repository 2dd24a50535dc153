"""Request-body limits enforced while the body streams in, before any multipart parsing.

Starlette's own limiter answers an over-long declared body in plain text; this one keeps the JSON
error shape. A body that declares a size over the limit is refused without reading a byte of it;
a chunked body is cut off as soon as the running count passes the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, error_response


class BodyTooLargeError(HTTPException):
    """Raised from ``receive``; FastAPI re-raises HTTP exceptions met while parsing a body."""

    def __init__(self, limit: int, note: str) -> None:
        super().__init__(413, describe_excess(limit, note))
        self.limit = limit


def describe_excess(limit: int, note: str) -> str:
    return f"the request body exceeds the limit of {limit} bytes{note}"


def _declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class BodyLimitMiddleware:
    """Cap every request body at ``limit_for(path)`` bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], note: str = "") -> None:
        self.app = app
        self.limit_for = limit_for
        self.note = note

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(limit, scope, receive, send)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit, self.note)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if response_started:
                raise
            await self._refuse(limit, scope, receive, send)

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        detail = describe_excess(limit, self.note)
        response = error_response(413, ErrorCode.UPLOAD_TOO_LARGE, detail, {"Connection": "close"})
        await response(scope, receive, send)
