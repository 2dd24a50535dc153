"""A real uvicorn process under bad uploads, oversized streams, and concurrent reads and writes.

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.service import samples
from tests.service.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
UPLOAD_LIMIT = 2 * 1024 * 1024  # what LiveServer configures


@pytest.fixture(scope="module")
def tile() -> Image.Image:
    return samples.tile_rgb(7)


def search(client: httpx.Client, data: bytes, name: str = "q.png", **form: Any) -> httpx.Response:
    return client.post("/search", files={"image": (name, data)}, data=form)


def result_ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


BAD: dict[str, tuple[Callable[[Image.Image], bytes], int, str]] = {
    "empty": (lambda tile: b"", 400, "empty_file"),
    "truncated jpeg": (
        lambda tile: samples.truncated(samples.encode(tile, "JPEG")),
        400,
        "corrupt_image",
    ),
    "truncated png": (
        lambda tile: samples.truncated(samples.encode(tile, "PNG")),
        400,
        "corrupt_image",
    ),
    "corrupt": (samples.corrupt_jpeg, 400, "corrupt_image"),
    "not an image": (lambda tile: samples.NOT_AN_IMAGE, 415, "unsupported_media_type"),
    "oversized": (lambda tile: b"\xff\xd8\xff" + bytes(UPLOAD_LIMIT + 1), 413, "upload_too_large"),
    "bomb": (lambda tile: samples.png_bomb(), 413, "image_too_large"),
    "multi-frame gif": (samples.gif_two_frames, 422, "multi_frame_image"),
    "multi-page tiff": (samples.tiff_two_pages, 422, "multi_frame_image"),
    "float tiff": (samples.float_tiff, 422, "unsupported_pixel_format"),
}


def test_bad_uploads_get_a_json_reason_and_the_next_request_is_served(
    live_server: LiveServer, tile: Image.Image
) -> None:
    good = samples.encode(tile, "PNG")
    with live_server.client() as client:
        for kind, (make, status, code) in BAD.items():
            response = search(client, make(tile))
            assert response.status_code == status, (kind, response.text)
            assert response.headers["content-type"] == "application/json", kind
            assert response.json()["code"] == code, kind
            assert response.json()["detail"], kind
            assert len(result_ids(search(client, good, k=3))) == 3, kind


VALID: dict[str, Callable[[Image.Image], bytes]] = {
    "grayscale png": lambda tile: samples.encode(tile.convert("L"), "PNG"),
    "palette png": lambda tile: samples.encode(tile.convert("P"), "PNG"),
    "single-frame gif": lambda tile: samples.encode(tile, "GIF"),
    "rgba png": samples.rgba_half_transparent,
    "cmyk jpeg": lambda tile: samples.encode(tile.convert("CMYK"), "JPEG", quality=95),
    "16-bit gray png": samples.png_gray16,
    "16-bit rgb png": samples.png_rgb16,
    "webp": lambda tile: samples.encode(tile, "WEBP", lossless=True),
    "bmp": lambda tile: samples.encode(tile, "BMP"),
}


def test_awkward_but_valid_images_are_searched(live_server: LiveServer, tile: Image.Image) -> None:
    with live_server.client() as client:
        for kind, make in VALID.items():
            response = search(client, make(tile), k=5)
            assert len(result_ids(response)) == 5, kind


def test_sixteen_bit_uploads_search_like_their_eight_bit_originals(
    live_server: LiveServer, tile: Image.Image
) -> None:
    with live_server.client() as client:
        rgb8 = result_ids(search(client, samples.encode(tile, "PNG"), k=10))
        rgb16 = result_ids(search(client, samples.png_rgb16(tile), k=10))
        gray8 = result_ids(search(client, samples.encode(tile.convert("L"), "PNG"), k=10))
        gray16 = result_ids(search(client, samples.png_gray16(tile), k=10))
    assert rgb16 == rgb8
    assert gray16 == gray8


def _raw_request(port: int, head: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(head)
    return connection


def _read_status(connection: socket.socket) -> int:
    response = b""
    while b"\r\n" not in response:
        chunk = connection.recv(4096)
        if not chunk:
            break
        response += chunk
    return int(response.split(b" ", 2)[1])


def test_oversized_declared_body_is_refused_without_reading_it(live_server: LiveServer) -> None:
    head = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    with _raw_request(live_server.port, head) as connection:
        connection.sendall(b"--x\r\n")
        assert _read_status(connection) == 413


def test_oversized_chunked_stream_is_cut_off_early(live_server: LiveServer) -> None:
    """No Content-Length: the limit must be enforced on the bytes as they arrive."""
    head = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
    chunk = b"\xff" * 65536
    sent, status = 0, None
    with _raw_request(live_server.port, head) as connection:
        connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        try:
            while sent < 200 * 1024 * 1024 and status is None:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                readable, _, _ = select.select([connection], [], [], 0)
                if readable:
                    status = _read_status(connection)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if status is None:
            status = _read_status(connection)
    assert status == 413
    assert sent < 4 * UPLOAD_LIMIT


def test_searches_concurrent_with_adds_and_deletes_see_only_whole_items(
    live_server: LiveServer, tile: Image.Image
) -> None:
    """Readers never fail and never see half an item; each acknowledged add is visible at once."""
    stop = threading.Event()
    failures: list[str] = []
    acknowledged: list[int] = []
    deleted: list[int] = []
    searches = [0]

    def reader(seed: int) -> None:
        query = samples.encode(samples.tile_rgb(seed), "PNG")
        with live_server.client() as client:
            while not stop.is_set():
                response = search(client, query, k=20)
                searches[0] += 1
                if response.status_code != 200:
                    failures.append(f"search {response.status_code}: {response.text}")
                    continue
                for hit in response.json()["results"]:
                    # A whole item has its metadata row: source and insertion time are never null.
                    if hit["source"] is None or hit["added_at"] is None:
                        failures.append(f"partial hit {hit}")

    def writer() -> None:
        with live_server.client() as client:
            for number in range(12):
                image = tile.rotate(number * 7 + 3, fillcolor=(255, 255, 255))
                label = f"concurrent-{number}"
                response = client.post(
                    "/index",
                    files={"images": (f"c{number}.png", samples.encode(image, "PNG"))},
                    data={"label": label, "source": f"concurrent/{number}"},
                    headers=AUTH,
                )
                if response.status_code != 201:
                    failures.append(f"add {response.status_code}: {response.text}")
                    continue
                item_id = response.json()["items"][0]["id"]
                acknowledged.append(item_id)
                visible = search(client, samples.encode(image, "PNG"), k=1, label=label)
                if result_ids(visible) != [item_id]:
                    failures.append(f"acknowledged item {item_id} not visible: {visible.text}")
                if number % 3 == 0:
                    removed = client.delete(f"/images/{item_id}", headers=AUTH)
                    if removed.status_code != 200:
                        failures.append(f"delete {removed.status_code}: {removed.text}")
                    deleted.append(item_id)
                    gone = search(client, samples.encode(image, "PNG"), k=1, label=label)
                    if result_ids(gone):
                        failures.append(f"deleted item {item_id} still found")

    with live_server.client() as client:
        items_before = client.get("/stats").json()["items"]
    readers = [threading.Thread(target=reader, args=(seed,)) for seed in (0, 40, 80)]
    for thread in readers:
        thread.start()
    try:
        writer()
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=60)
    assert not failures, failures[:5]
    assert searches[0] > 0
    with live_server.client() as client:
        assert client.get("/stats").json()["items"] == items_before + len(acknowledged) - len(
            deleted
        )
        for item_id in acknowledged:
            expected = 404 if item_id in deleted else 200
            assert client.get(f"/images/{item_id}").status_code == expected


def test_health_answers_while_a_slow_upload_is_in_flight(live_server: LiveServer) -> None:
    """A client that trickles its body must not hold up anyone else."""
    head = (
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n"
    )
    with _raw_request(live_server.port, head) as slow, live_server.client() as client:
        assert client.get("/health").status_code == 200
        # Answered while the slow upload is still waiting for its body.
        readable, _, _ = select.select([slow], [], [], 0)
        assert readable == []
