"""Connection hygiene below the app: stalled clients are answered 408 and dropped.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline for a
request's headers or body: a client that sends half a request holds its connection, and its file
descriptor, for as long as it likes, and a few thousand such clients exhaust the descriptors so
that even /health is refused. uvicorn's ``limit_concurrency`` does not help: it counts those
stalled connections and answers every new request 503 once they pass the limit, /health included.

:func:`guarded_protocol` makes a subclass of uvicorn's httptools protocol (uvicorn takes a
protocol class for ``http``) that adds, per connection:

- a header deadline: the request line and headers must arrive within ``header_timeout``, counted
  from connecting (or from the first byte of a later request on a kept-alive connection), and
  within ``max_header_bytes``;
- a body rate floor: once ``body_grace`` seconds of reading have passed, the body must have
  arrived at ``body_min_rate`` bytes per second on average (time when the server itself paused
  reading is not counted);
- a cap on open connections: past ``max_connections`` the connection that has waited longest for
  its headers is dropped to make room, so a flood of stalled connections cannot lock out a new
  client (a refusal, 503, only when every open connection is busy with a request); and a cap of
  ``max_connections_per_client`` per client address.

Everything runs on the event loop, in protocol callbacks and loop timers: no extra task per
connection.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.schemas import ErrorCode

# How often a body in progress is checked against the rate floor.
BODY_CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    header_timeout: float = 5.0
    body_min_rate: int = 16 * 1024
    body_grace: float = 5.0
    max_connections: int = 2048
    max_connections_per_client: int = 256
    max_header_bytes: int = 64 * 1024


@dataclass(slots=True)
class ConnectionRegistry:
    """What all connections of one server share: who waits for headers, and per-address counts."""

    policy: ConnectionPolicy
    # Insertion-ordered: the first entry has waited longest for its headers.
    awaiting_headers: dict[GuardedHttpToolsProtocol, None] = field(default_factory=dict)
    per_client: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def longest_waiting(self) -> GuardedHttpToolsProtocol | None:
        return next(iter(self.awaiting_headers), None)


def _raw_error(status: int, reason: str, code: ErrorCode, detail: str) -> bytes:
    body = json.dumps({"code": code.value, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header deadlines, a body rate floor and connection caps."""

    registry: ClassVar[ConnectionRegistry]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address = ""
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._header_tail = b""
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._body_reading_s = 0.0

    # ---- connection life ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        registry, policy = self.registry, self.registry.policy
        self._address = self.client[0] if self.client else ""
        registry.per_client[self._address] += 1
        self._counted = True
        if registry.per_client[self._address] > policy.max_connections_per_client:
            self._refuse(
                f"this address already holds {policy.max_connections_per_client} open "
                "connections, the most one client may hold"
            )
            return
        if len(self.connections) > policy.max_connections and not self._make_room():
            self._refuse(f"the server holds its most connections ({policy.max_connections})")
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        if self._counted:
            self._counted = False
            self.registry.per_client[self._address] -= 1
            if self.registry.per_client[self._address] <= 0:
                del self.registry.per_client[self._address]
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Drop the connection that has waited longest for its headers; False if none waits."""
        victim = self.registry.longest_waiting()
        if victim is None:
            return False
        victim._drop("the server needed this connection for another client")
        return True

    # ---- headers --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # Counted before the parser sees the bytes, up to the blank line that ends the headers:
        # headers that end within a chunk count as well as those still arriving (counting only
        # unfinished ones let up to two 64 KiB reads of headers through).
        if self._awaiting_headers():
            limit = self.registry.policy.max_header_bytes
            self._header_bytes += self._header_part(data)
            if self._header_bytes > limit:
                self._drop(
                    f"the request headers exceed {limit} bytes",
                    status=431,
                    reason="Request Header Fields Too Large",
                    code=ErrorCode.BAD_REQUEST,
                )
                return
        super().data_received(data)

    def _awaiting_headers(self) -> bool:
        """No request, or only finished ones, since the last headers: bytes now are headers."""
        return self._header_timer is not None or self.cycle is None or self.cycle.response_complete

    def _header_part(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the headers (up to and with the blank line)."""
        window = self._header_tail + data
        end = window.find(b"\r\n\r\n")
        self._header_tail = window[-3:]
        if end < 0:
            return len(data)
        return max(0, end + 4 - (len(window) - len(data)))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._header_bytes = 0
        self._header_tail = b""
        super().on_headers_complete()
        if self.registry.policy.body_min_rate and _has_body(self.headers):
            self._body_bytes = 0
            self._body_reading_s = 0.0
            self._body_timer = self.loop.call_later(BODY_CHECK_INTERVAL_S, self._check_body_rate)

    def _await_headers(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self.registry.awaiting_headers[self] = None
            self._header_timer = self.loop.call_later(
                self.registry.policy.header_timeout, self._on_header_timeout
            )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.registry.awaiting_headers.pop(self, None)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        self._drop(
            f"the request headers did not arrive within {self.registry.policy.header_timeout:g} s"
        )

    # ---- body -----------------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # Idle between requests: the first to go when room is needed (no deadline of its
            # own: uvicorn's keep-alive timeout closes it).
            self.registry.awaiting_headers[self] = None

    def _check_body_rate(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        # While the server has paused reading (the app has not taken what arrived), the client
        # cannot be blamed for the silence.
        if not self.flow.read_paused:
            self._body_reading_s += BODY_CHECK_INTERVAL_S
        policy = self.registry.policy
        floor = policy.body_min_rate * self._body_reading_s
        if self._body_reading_s >= policy.body_grace and self._body_bytes < floor:
            self._drop(
                f"the request body arrived at {self._body_bytes / self._body_reading_s:.0f} "
                f"bytes/s, below the floor of {policy.body_min_rate} bytes/s"
            )
            return
        self._body_timer = self.loop.call_later(BODY_CHECK_INTERVAL_S, self._check_body_rate)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # ---- answering and closing ------------------------------------------------------------

    def _drop(
        self,
        detail: str,
        *,
        status: int = 408,
        reason: str = "Request Timeout",
        code: ErrorCode = ErrorCode.REQUEST_TIMEOUT,
    ) -> None:
        """Answer (unless a response has begun) and close; the app sees a disconnect."""
        self._stop_header_timer()
        self._stop_body_timer()
        if self.transport.is_closing():
            return
        self.registry.dropped[code.value] += 1
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_raw_error(status, reason, code, detail))
        if cycle is not None:
            # Whatever the app still sends for this request goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _refuse(self, detail: str) -> None:
        self.registry.dropped[ErrorCode.TOO_MANY_CONNECTIONS.value] += 1
        self.transport.write(
            _raw_error(503, "Service Unavailable", ErrorCode.TOO_MANY_CONNECTIONS, detail)
        )
        self.transport.close()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


def guarded_protocol(policy: ConnectionPolicy) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own registry of connections."""
    registry = ConnectionRegistry(policy)
    return type("HistosearchHttpProtocol", (GuardedHttpToolsProtocol,), {"registry": registry})
