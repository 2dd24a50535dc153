"""The API description says what the server does: security as configured, every status, limits,
and documentation pages that load nothing from elsewhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from service.schemas import ErrorCode
from tests.service.test_api import make_client

READS = [("/search", "post"), ("/images/{item_id}", "get"), ("/images/{item_id}/thumbnail", "get")]
READS += [("/stats", "get")]
WRITES = [("/index", "post"), ("/images/{item_id}", "delete")]
OPEN = [("/health", "get"), ("/health", "head"), ("/ready", "get"), ("/ready", "head")]


@pytest.fixture(scope="module")
def client(small_index: Path) -> Iterator[TestClient]:
    with make_client(small_index) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    return schema


def form_property(schema: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    form = schema["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]
    prop: dict[str, Any] = form["properties"][name]
    return prop


def test_reads_are_open_and_writes_keyed_by_default(openapi: dict[str, Any]) -> None:
    for path, method in READS + OPEN:
        operation = openapi["paths"][path][method]
        assert "security" not in operation, (path, method)
        assert "401" not in operation["responses"], (path, method)
    for path, method in WRITES:
        operation = openapi["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], (path, method)
        assert {"401", "403"} <= set(operation["responses"]), (path, method)


def test_reads_are_keyed_when_the_settings_require_it(small_index: Path) -> None:
    with make_client(small_index, require_key_for_search=True) as locked:
        schema = locked.get("/openapi.json").json()
    for path, method in READS + WRITES:
        operation = schema["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], (path, method)
        assert "401" in operation["responses"], (path, method)
    for path, method in OPEN:
        assert "security" not in schema["paths"][path][method], (path, method)


def test_every_operation_documents_its_error_statuses(openapi: dict[str, Any]) -> None:
    expected = {
        ("/search", "post"): {"400", "413", "415", "422", "429", "503"},
        ("/index", "post"): {"400", "401", "403", "413", "415", "422", "429", "503"},
        ("/images/{item_id}", "get"): {"404", "422", "503"},
        ("/images/{item_id}", "delete"): {"401", "403", "404", "422", "503"},
        ("/images/{item_id}/thumbnail", "get"): {"304", "404", "422", "503"},
        ("/ready", "get"): {"503"},
    }
    for (path, method), statuses in expected.items():
        documented = set(openapi["paths"][path][method]["responses"])
        assert statuses <= documented, (path, method, statuses - documented)


def test_limits_and_required_lists_are_in_the_schema(openapi: dict[str, Any]) -> None:
    images = form_property(openapi, "/index", "images")
    assert images["minItems"] == 1 and images["maxItems"] == 32
    assert form_property(openapi, "/search", "k")["maximum"] == 50  # make_client's max_k
    label = form_property(openapi, "/index", "label")
    # Multipart has no null: optional text is a string with the text rule, or absent.
    assert label["type"] == "string" and "pattern" in label and "anyOf" not in label
    item_id = form_property(openapi, "/search", "item_id")
    assert item_id["type"] == "integer" and "anyOf" not in item_id
    search_form = openapi["components"]["schemas"]["Body_search_search_post"]
    # Exactly one of an image, an item id and a slide region (all five of its fields, no mpp).
    kinds = jsonschema.Draft202012Validator({"oneOf": search_form["oneOf"]})
    region = {"slide_id": "ab", "x": 0, "y": 0, "width": 9, "height": 9}
    for accepted in ({"image": "", "mpp": 1}, {"item_id": 1}, region):
        assert kinds.is_valid(accepted), accepted
    for refused in (
        {},
        {"image": "", "item_id": 1},
        {**region, "image": ""},
        {**region, "mpp": 1},
        {"slide_id": "ab", "x": 0},
        {"item_id": 1, "x": 0},
    ):
        assert not kinds.is_valid(refused), refused  # fmt: skip
    encoding = openapi["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "image/png" in encoding["encoding"]["image"]["contentType"]


def test_error_codes_are_one_documented_enumeration(openapi: dict[str, Any]) -> None:
    code = openapi["components"]["schemas"]["ErrorResponse"]["properties"]["code"]
    target = openapi["components"]["schemas"][code["$ref"].rsplit("/", 1)[-1]]
    assert set(target["enum"]) == {member.value for member in ErrorCode}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_this_servers_files(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    references = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert references
    for reference in references:
        assert reference.startswith("/"), reference
        assert client.get(reference).status_code == 200, reference
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_swagger_ui_starts_from_a_script_file_not_inline_code(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "<script>" not in page
    init = client.get("/static/docs/swagger-init.js").text
    assert "/openapi.json" in init and "validatorUrl: null" in init


def test_uploads_may_not_be_empty_and_item_ids_have_their_exact_bounds(
    openapi: dict[str, Any],
) -> None:
    assert form_property(openapi, "/search", "image")["minLength"] == 1
    assert form_property(openapi, "/index", "images")["items"]["minLength"] == 1
    item_id = form_property(openapi, "/search", "item_id")
    assert (item_id["minimum"], item_id["maximum"]) == (0, 2**63 - 1)
    assert isinstance(item_id["maximum"], int)
