"""Text fields and file counts: control characters and bad UTF-8 are refused, never stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.forms import TEXT_PATTERN, text_problem
from tests.service import samples
from tests.service.test_api import assert_error, make_client

AUTH = {"Authorization": "Bearer test-key-0123456789abcdef"}
BOUNDARY = "histosearch-test-boundary"


@pytest.fixture(scope="module")
def client(small_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    import shutil

    target = tmp_path_factory.mktemp("forms") / "index"
    shutil.copytree(small_index, target)
    with make_client(target) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tile_png() -> bytes:
    return samples.encode(samples.tile_rgb(3).rotate(90), "PNG")


def multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand: (Content-Disposition parameters, content) per part, so
    a test can send bytes no client library would (invalid UTF-8)."""
    body = b""
    for disposition, content in parts:
        body += f"--{BOUNDARY}\r\n".encode()
        body += b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n" + content + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def index_with_label(client: TestClient, data: bytes, label: str) -> Any:
    return client.post(
        "/index", files={"images": ("t.png", data)}, data={"label": label}, headers=AUTH
    )


@pytest.mark.parametrize(
    ("text", "character"),
    [
        ("tumour\x00grade", "U+0000"),
        ("line\nbreak", "U+000A"),
        ("escape\x1b[31m", "U+001B"),
        ("c1\x85control", "U+0085"),
        ("\u202eevil", "U+202E"),
        ("isolate\u2066x\u2069", "U+2066"),
    ],
)
def test_labels_with_control_characters_are_refused_and_nothing_is_stored(
    client: TestClient, tile_png: bytes, text: str, character: str
) -> None:
    before = client.get("/ready").json()["items"]
    body = assert_error(index_with_label(client, tile_png, text), 422, "invalid_text")
    assert "label" in body["detail"] and character in body["detail"]
    assert client.get("/ready").json()["items"] == before


def test_search_filters_with_control_characters_are_refused(
    client: TestClient, tile_png: bytes
) -> None:
    response = client.post(
        "/search", files={"image": ("q.png", tile_png)}, data={"exclude_group": "p\x007"}
    )
    assert "exclude_group" in assert_error(response, 422, "invalid_text")["detail"]


def test_invalid_utf8_in_a_field_is_refused_not_transcoded(
    client: TestClient, tile_png: bytes
) -> None:
    body, headers = multipart(
        [
            (b'name="images"; filename="t.png"', tile_png),
            (b'name="label"', b"caf\xe9"),  # Latin-1, not UTF-8
        ]
    )
    response = client.post("/index", content=body, headers={**headers, **AUTH})
    detail = assert_error(response, 422, "invalid_text")["detail"]
    assert "UTF-8" in detail and "label" in detail


def test_file_names_with_control_characters_or_invalid_utf8_are_refused(
    client: TestClient, tile_png: bytes
) -> None:
    for filename in (b"bad\x07.png", b"caf\xe9.png"):
        body, headers = multipart([(b'name="image"; filename="' + filename + b'"', tile_png)])
        response = client.post("/search", content=body, headers=headers)
        assert "file name" in assert_error(response, 422, "invalid_text")["detail"]


def test_text_in_any_script_is_kept_exactly(client: TestClient) -> None:
    label = "Ünïcødé 標本 — נוסח"  # accents, CJK, Hebrew without directional controls
    image = samples.tile_rgb(11).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    created = index_with_label(client, samples.encode(image, "PNG"), label)
    assert created.status_code == 201, created.text
    item_id = created.json()["items"][0]["id"]
    assert client.get(f"/images/{item_id}").json()["label"] == label


def test_more_files_than_the_limit_get_413_too_many_files(client: TestClient) -> None:
    tiny = samples.encode(Image.new("RGB", (8, 8), (200, 100, 150)), "PNG")
    files = [("images", (f"f{number}.png", tiny)) for number in range(33)]
    body = assert_error(client.post("/index", files=files, headers=AUTH), 413, "too_many_files")
    assert "32" in body["detail"]
    two = [("image", ("a.png", tiny)), ("image", ("b.png", tiny))]
    assert_error(client.post("/search", files=two), 413, "too_many_files")


def test_fields_the_route_does_not_read_are_ignored_whatever_they_hold(
    client: TestClient, tile_png: bytes
) -> None:
    response = client.post(
        "/search", files={"image": ("q.png", tile_png)}, data={"unused\x01": "\x00"}
    )
    assert response.status_code == 200, response.text


def test_the_documented_pattern_and_the_check_agree() -> None:
    import re

    samples_ = ["plain", "tab\there", "\u200fmark", "DEL\x7f", "ok ünï 標本", "nbsp\xa0ok"]
    for text in samples_:
        assert (re.fullmatch(TEXT_PATTERN, text) is not None) == (text_problem(text) is None), text
