"""Methods: HEAD on the probes, OPTIONS and 405 name every method a path serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.test_api import assert_error, make_client


@pytest.fixture(scope="module")
def client(small_index: Path) -> Iterator[TestClient]:
    # Nothing here writes: the read-only template index is enough.
    with make_client(small_index) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_answer_head_without_a_body(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/images/1", "DELETE, GET, OPTIONS"),
        ("/images/1/thumbnail", "GET, OPTIONS"),
        ("/health", "GET, HEAD, OPTIONS"),
        ("/search", "OPTIONS, POST"),
        ("/index", "OPTIONS, POST"),
        ("/static/app.js", "GET, HEAD, OPTIONS"),
    ],
)
def test_options_and_405_list_every_method_served(
    client: TestClient, path: str, methods: str
) -> None:
    options = client.options(path)
    assert options.status_code == 204
    assert options.headers["allow"] == methods
    refused = client.request("PATCH", path)
    assert_error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == methods


def test_options_on_an_unknown_path_is_404(client: TestClient) -> None:
    assert_error(client.options("/nowhere"), 404, "not_found")
