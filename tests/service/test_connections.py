"""Stalled and slow clients against a real uvicorn server: answered 408, dropped, and /health
keeps answering meanwhile. Traffic goes to 127.0.0.1 only (from several loopback addresses)."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import LiveServer

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 2
STALLED_PER_ADDRESS = 100
STALLED_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# Long enough for every deadline to pass on a loaded machine; the test ends as soon as all close.
GIVE_UP_S = 60


@pytest.fixture(scope="module")
def guarded_server(
    small_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("guarded")
    env = {
        "HISTOSEARCH_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
        "HISTOSEARCH_BODY_GRACE_SECONDS": "2",
        "HISTOSEARCH_BODY_MIN_BYTES_PER_SECOND": "1000",
        "HISTOSEARCH_MAX_CONNECTIONS_PER_CLIENT": "150",
    }
    # The server only reads the index: the template is not copied.
    server = LiveServer(small_index, directory / "server.log", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def connect_from(address: str, port: int) -> socket.socket:
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.bind((address, 0))
    connection.settimeout(10)
    connection.connect(("127.0.0.1", port))
    return connection


def read_until_closed(connections: list[socket.socket], give_up_s: float) -> dict[int, bytes]:
    """Everything each connection receives until the server closes it (or time runs out)."""
    received = {connection.fileno(): b"" for connection in connections}
    open_ = {connection.fileno(): connection for connection in connections}
    deadline = time.monotonic() + give_up_s
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_.values()), [], [], 1.0)
        for connection in readable:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[connection.fileno()] += chunk
            else:
                del open_[connection.fileno()]
    assert not open_, f"{len(open_)} connections still open after {give_up_s} s"
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def test_hundreds_of_half_sent_requests_are_dropped_while_health_answers(
    guarded_server: LiveServer,
) -> None:
    stalled = []
    try:
        for address in STALLED_ADDRESSES:
            for number in range(STALLED_PER_ADDRESS):
                connection = connect_from(address, guarded_server.port)
                # Half a request line, or a full line and half the headers.
                head = b"GET /heal" if number % 2 else b"GET /health HTTP/1.1\r\nHost: x\r\n"
                connection.sendall(head)
                stalled.append(connection)
        with httpx.Client(base_url=guarded_server.url, timeout=30) as client:
            for _ in range(5):
                assert client.get("/health").json() == {"status": "alive"}
        received = read_until_closed(stalled, GIVE_UP_S)
    finally:
        for connection in stalled:
            connection.close()
    statuses = [status_of(response) for response in received.values()]
    assert statuses == [408] * len(stalled)
    assert all(b'"request_timeout"' in response for response in received.values())
    with httpx.Client(base_url=guarded_server.url, timeout=30) as client:
        assert client.get("/ready").status_code == 200


def test_a_body_slower_than_the_floor_is_answered_408(guarded_server: LiveServer) -> None:
    head = (
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    connection = connect_from("127.0.0.5", guarded_server.port)
    try:
        connection.sendall(head)
        connection.sendall(
            b'--x\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        )
        response = b""
        deadline = time.monotonic() + GIVE_UP_S
        # A few bytes a quarter second: far below 1000 bytes/s.
        while time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0.25)
            if readable:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                response += chunk
                continue
            try:
                connection.sendall(b"\xff\xd8\xff\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
    finally:
        connection.close()
    assert status_of(response) == 408, response
    assert b"bytes/s" in response


def test_one_address_holds_at_most_its_share_of_connections(guarded_server: LiveServer) -> None:
    held = [connect_from("127.0.0.6", guarded_server.port) for _ in range(160)]
    try:
        with httpx.Client(base_url=guarded_server.url, timeout=30) as client:
            assert client.get("/health").status_code == 200
        received = read_until_closed(held, GIVE_UP_S)
    finally:
        for connection in held:
            connection.close()
    statuses = sorted(status_of(response) for response in received.values())
    # 150 held until their header deadline, the 10 beyond the share refused at once.
    assert statuses == [408] * 150 + [503] * 10
    refusals = [response for response in received.values() if status_of(response) == 503]
    assert all(b"too_many_connections" in response for response in refusals)


@pytest.fixture(scope="module")
def crowded_server(
    small_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("crowded")
    # A long header deadline: here only the connection cap can close stalled connections.
    env = {"HISTOSEARCH_MAX_CONNECTIONS": "64", "HISTOSEARCH_HEADER_TIMEOUT_SECONDS": "300"}
    server = LiveServer(small_index, directory / "server.log", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def test_past_the_connection_cap_the_longest_stalled_make_room(
    crowded_server: LiveServer,
) -> None:
    stalled = []
    try:
        for number in range(100):
            connection = connect_from(f"127.0.1.{number % 50 + 1}", crowded_server.port)
            connection.sendall(b"POST /search HTTP/1.1\r\n")
            stalled.append(connection)
        with httpx.Client(base_url=crowded_server.url, timeout=30) as client:
            assert client.get("/health").status_code == 200
        # 100 stalled and one probe against 64 places: the 36 oldest made room (and then one
        # more for the probe); the newest are still held.
        oldest = read_until_closed(stalled[:36], GIVE_UP_S)
        readable, _, _ = select.select(stalled[-20:], [], [], 0)
    finally:
        for connection in stalled:
            connection.close()
    assert [status_of(response) for response in oldest.values()] == [408] * 36
    assert readable == []


@pytest.mark.parametrize(("kib", "status"), [(60, 200), (66, 431), (100, 431)])
def test_complete_headers_are_capped_at_64_kib(
    guarded_server: LiveServer, kib: int, status: int
) -> None:
    filler = b"".join(b"X-Filler-%d: " % n + b"a" * 1000 + b"\r\n" for n in range(kib))
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + filler + b"Connection: close\r\n\r\n"
    connection = connect_from("127.0.0.9", guarded_server.port)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(request)
        response = read_until_closed([connection], GIVE_UP_S)[connection.fileno()]
    finally:
        connection.close()
    assert status_of(response) == status


def test_endless_headers_are_cut_off_with_431(guarded_server: LiveServer) -> None:
    connection = connect_from("127.0.0.8", guarded_server.port)
    try:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        try:
            for _ in range(100):  # 100 KB of headers, never ended
                connection.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_until_closed([connection], GIVE_UP_S)[connection.fileno()]
    finally:
        connection.close()
    assert status_of(response) == 431
