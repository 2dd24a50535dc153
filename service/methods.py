"""``Allow`` headers that list every method a path serves, and answers to ``OPTIONS``.

Starlette answers a wrong method with the methods of the first route whose path matched, so
``/images/{id}`` (GET and DELETE, two routes) said ``Allow: GET``; and it answers ``OPTIONS``
with 405. Here both come from all the app's routes that match the path.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Mounted static files answer these.
_STATIC_METHODS = frozenset({"GET", "HEAD"})


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> set[str]:
    """Methods the routes serve at the scope's path (empty when no route has that path)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            methods |= _STATIC_METHODS
        else:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def allow_header(methods: set[str]) -> str:
    return ", ".join(sorted(methods | {"OPTIONS"}))


class AllowedMethodsMiddleware:
    """Answers ``OPTIONS`` with 204 and ``Allow``; rewrites ``Allow`` on every 405.

    ``routes`` is every route the app serves, flat (routers' routes, not the routers): the app
    fills the list as it includes them.
    """

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routes = self.routes
        if scope["method"] == "OPTIONS":
            methods = allowed_methods(routes, scope)
            if methods:
                response = Response(status_code=204, headers={"Allow": allow_header(methods)})
                await response(scope, receive, send)
                return

        # Mounts rewrite the scope's paths on the way in: keep the request's own for later.
        request_scope = {
            "type": "http",
            "method": scope["method"],
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
        }

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                MutableHeaders(scope=message)["Allow"] = allow_header(
                    allowed_methods(routes, request_scope)
                )
            await send(message)

        await self.app(scope, receive, send_with_allow)
