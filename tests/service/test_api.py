"""The HTTP contract through TestClient: every error path is a specific 4xx with a JSON reason."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.service import samples
from tests.service.conftest import API_KEY, tile_box

MAX_UPLOAD = 1024 * 1024


def make_client(index_dir: Path, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "index_dir": index_dir,
        "api_key": API_KEY,
        "max_upload_bytes": MAX_UPLOAD,
        "max_k": 50,
        "workers": 1,
        "device": "cpu",
    }
    options.update(overrides)
    return TestClient(create_app(Settings(**options)))


@pytest.fixture(scope="module")
def module_index(small_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("api") / "index"
    shutil.copytree(small_index, target)
    return target


@pytest.fixture(scope="module")
def client(module_index: Path) -> Iterator[TestClient]:
    with make_client(module_index) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tile() -> Image.Image:
    return samples.tile_rgb(0)


def search(client: TestClient, data: bytes, name: str = "query.png", **form: Any) -> Any:
    return client.post("/search", files={"image": (name, data)}, data=form)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["detail"]
    return body


# --- system ---------------------------------------------------------------------------------------


def test_health_and_ready_answer_once_loaded(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "alive"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["items"] >= 240


def test_ready_is_503_before_the_index_is_loaded(module_index: Path) -> None:
    app = create_app(Settings(index_dir=module_index, api_key=SecretStr(API_KEY)))
    without_lifespan = TestClient(app)  # not entered: lifespan has not run
    assert_error(without_lifespan.get("/ready"), 503, "not_ready")
    assert without_lifespan.get("/health").status_code == 200


def test_stats_report_items_code_size_and_model_card(client: TestClient) -> None:
    stats = client.get("/stats").json()
    assert stats["items"] >= 240
    assert stats["bits"] == 32
    assert stats["code_bytes"] == 4
    assert stats["model_card"]["backbone"] == "resnet18"
    assert stats["model_card"]["input_size"] == 64


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/search", "/index", "/images/{item_id}", "/images/{item_id}/thumbnail"):
        assert route in paths
    assert client.get("/docs").status_code == 200


def test_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200


# --- search ---------------------------------------------------------------------------------------


def test_search_ranks_the_archived_tile_itself_at_the_top_score(client: TestClient) -> None:
    path, label, group = samples.kather_tiles()[5]
    source, box = tile_box(path)
    assert box is not None
    # The label filter leaves its 30 tiles, so the tile itself must be among them.
    body = search(client, path.read_bytes(), name=path.name, k=30, label=label).json()
    results = body["results"]
    assert len(results) == 30
    itself = [
        hit
        for hit in results
        if hit["source"] == f"{group}/{source}"
        and hit["tile"] == {"x": box[0], "y": box[1], "width": box[2], "height": box[3]}
    ]
    assert len(itself) == 1
    # Its own code is the best code for its own descriptor, so nothing can score higher (a random
    # model gives many tiles the same code, so others may tie).
    assert itself[0]["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    top = results[0]
    assert top["thumbnail_url"] == f"/images/{top['id']}/thumbnail"
    assert [hit["rank"] for hit in results] == list(range(1, 31))
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    for phase in ("decode_ms", "embed_ms", "search_ms", "total_ms"):
        assert body["timings"][phase] >= 0


def test_search_filters_by_label_and_excludes_a_group(
    client: TestClient, tile: Image.Image
) -> None:
    data = samples.encode(tile, "PNG")
    by_label = search(client, data, k=20, label="07_ADIPOSE").json()["results"]
    assert by_label and {hit["label"] for hit in by_label} == {"07_ADIPOSE"}
    excluded = search(client, data, k=50, exclude_group="CRC-Prim-HE-03").json()["results"]
    assert excluded and "CRC-Prim-HE-03" not in {hit["group"] for hit in excluded}


def test_search_with_blank_filters_means_no_filter(client: TestClient, tile: Image.Image) -> None:
    response = search(client, samples.encode(tile, "PNG"), k=3, label="", exclude_group="")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 3


def test_search_rejects_k_above_the_limit(client: TestClient, tile: Image.Image) -> None:
    assert_error(search(client, samples.encode(tile, "PNG"), k=51), 422, "k_too_large")
    assert_error(search(client, samples.encode(tile, "PNG"), k=0), 422, "invalid_request")
    assert_error(search(client, samples.encode(tile, "PNG"), k="ten"), 422, "invalid_request")


def test_search_without_an_image_is_a_validation_error(client: TestClient) -> None:
    body = assert_error(client.post("/search", data={"k": "3"}), 422, "invalid_request")
    assert "image" in body["detail"]


BAD_UPLOADS: dict[str, tuple[Callable[[Image.Image], bytes], int, str]] = {
    "empty": (lambda tile: b"", 400, "empty_file"),
    "truncated": (
        lambda tile: samples.truncated(samples.encode(tile, "JPEG")),
        400,
        "corrupt_image",
    ),
    "corrupt": (samples.corrupt_jpeg, 400, "corrupt_image"),
    "not an image": (lambda tile: samples.NOT_AN_IMAGE, 415, "unsupported_media_type"),
    "bomb": (lambda tile: samples.png_bomb(), 413, "image_too_large"),
    "animated": (samples.gif_two_frames, 422, "multi_frame_image"),
    "float": (samples.float_tiff, 422, "unsupported_pixel_format"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_search_rejects_bad_uploads_with_a_reason(
    client: TestClient, tile: Image.Image, kind: str
) -> None:
    make, status, code = BAD_UPLOADS[kind]
    assert_error(search(client, make(tile)), status, code)
    assert search(client, samples.encode(tile, "PNG"), k=1).status_code == 200


def test_search_rejects_an_oversized_upload(client: TestClient) -> None:
    just_over = search(client, b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD + 1))
    assert_error(just_over, 413, "upload_too_large")
    # Far over: refused by the body limit from the declared length, still as JSON.
    far_over = search(client, b"\xff\xd8\xff" + b"\0" * (3 * MAX_UPLOAD))
    body = assert_error(far_over, 413, "upload_too_large")
    assert str(MAX_UPLOAD) in body["detail"]


def test_small_endpoints_refuse_large_bodies(client: TestClient, auth: dict[str, str]) -> None:
    response = client.request("DELETE", "/images/1", content=b"x" * 200_000, headers=auth)
    assert_error(response, 413, "upload_too_large")


# --- auth -----------------------------------------------------------------------------------------


def test_writes_need_the_key(client: TestClient, tile: Image.Image) -> None:
    files = {"images": ("x.png", samples.encode(tile, "PNG"))}
    missing = assert_error(client.post("/index", files=files), 401, "missing_api_key")
    assert "Bearer" in missing["detail"]
    wrong = client.post("/index", files=files, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "invalid_api_key")
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert_error(client.delete("/images/1"), 401, "missing_api_key")


def test_writes_are_refused_when_no_key_is_configured(
    module_index: Path, tile: Image.Image
) -> None:
    with make_client(module_index, api_key=None) as open_client:
        response = open_client.post(
            "/index",
            files={"images": ("x.png", samples.encode(tile, "PNG"))},
            headers={"Authorization": "Bearer anything"},
        )
        body = assert_error(response, 403, "writes_disabled")
        assert "HISTOSEARCH_API_KEY" in body["detail"]
        assert search(open_client, samples.encode(tile, "PNG"), k=1).status_code == 200


def test_search_can_require_the_key(module_index: Path, tile: Image.Image) -> None:
    with make_client(module_index, require_key_for_search=True) as locked:
        assert_error(search(locked, samples.encode(tile, "PNG")), 401, "missing_api_key")
        assert_error(locked.get("/images/1"), 401, "missing_api_key")
        assert_error(locked.get("/images/1/thumbnail"), 401, "missing_api_key")
        assert_error(locked.get("/stats"), 401, "missing_api_key")
        assert locked.get("/health").status_code == 200
        # Readiness stays open, without what only a keyed read may learn.
        assert locked.get("/ready").json() == {"status": "ready"}
        assert locked.head("/ready").status_code == 200
        allowed = locked.post(
            "/search",
            files={"image": ("q.png", samples.encode(tile, "PNG"))},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert allowed.status_code == 200


def test_no_cors_headers_unless_origins_are_configured(
    module_index: Path, client: TestClient
) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with make_client(module_index, cors_origins=["https://elsewhere.example"]) as cors:
        allowed = cors.get("/health", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://elsewhere.example"


# --- index, read, delete --------------------------------------------------------------------------


def test_index_read_thumbnail_and_delete_round_trip(
    client: TestClient, auth: dict[str, str], tile: Image.Image
) -> None:
    new_tile = samples.encode(tile.rotate(180).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    form = {
        "label": "probe",
        "group": "g-probe",
        "dataset": "uploads",
        "source": "../../etc/passwd",
    }
    created = client.post(
        "/index", files={"images": ("new.png", new_tile)}, data=form, headers=auth
    )
    assert created.status_code == 201, created.text
    item = created.json()["items"][0]
    assert item["status"] == "added" and created.json()["added"] == 1

    again = client.post("/index", files={"images": ("again.png", new_tile)}, headers=auth)
    assert again.status_code == 200
    assert again.json()["items"][0] == {**item, "filename": "again.png", "status": "duplicate"}

    metadata = client.get(f"/images/{item['id']}").json()
    assert metadata["label"] == "probe" and metadata["source"] == "../../etc/passwd"
    assert metadata["source_size"] == {"width": 150, "height": 150}
    assert metadata["tile"] == {"x": 0, "y": 0, "width": 150, "height": 150}
    thumbnail = client.get(f"/images/{item['id']}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"

    found = search(client, new_tile, k=1, label="probe").json()["results"]
    assert [hit["id"] for hit in found] == [item["id"]]

    assert client.delete(f"/images/{item['id']}", headers=auth).json() == {
        "id": item["id"],
        "deleted": True,
    }
    assert_error(client.get(f"/images/{item['id']}"), 404, "not_found")
    assert_error(client.delete(f"/images/{item['id']}", headers=auth), 404, "not_found")
    assert search(client, new_tile, k=1, label="probe").json()["results"] == []


def test_index_refuses_the_whole_request_if_one_file_is_bad(
    client: TestClient, auth: dict[str, str], tile: Image.Image
) -> None:
    before = client.get("/ready").json()["items"]
    files = [
        ("images", ("good.png", samples.encode(tile.rotate(90), "PNG"))),
        ("images", ("bad.jpg", samples.truncated(samples.encode(tile, "JPEG")))),
    ]
    body = assert_error(client.post("/index", files=files, headers=auth), 400, "corrupt_image")
    assert "bad.jpg" in body["detail"]
    assert client.get("/ready").json()["items"] == before


@pytest.mark.parametrize("item_id", ["abc", "-1", "1.5", "99999999999999999999999", "%2e%2e"])
def test_ids_must_be_integers(client: TestClient, item_id: str) -> None:
    assert_error(client.get(f"/images/{item_id}"), 422, "invalid_request")


def test_unknown_ids_and_paths_are_404(client: TestClient) -> None:
    assert_error(client.get("/images/987654321"), 404, "not_found")
    assert_error(client.get("/images/987654321/thumbnail"), 404, "not_found")
    assert client.get("/images/../../etc/passwd").status_code == 404
    assert client.get("/static/../settings.py").status_code == 404


def test_thumbnails_are_revalidated_so_a_deleted_one_does_not_linger(
    client: TestClient, auth: dict[str, str], tile: Image.Image
) -> None:
    data = samples.encode(tile.rotate(45, fillcolor=(255, 255, 255)), "PNG")
    item_id = client.post("/index", files={"images": ("t.png", data)}, headers=auth).json()[
        "items"
    ][0]["id"]
    first = client.get(f"/images/{item_id}/thumbnail")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    unchanged = client.get(f"/images/{item_id}/thumbnail", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    other = client.get(f"/images/{item_id}/thumbnail", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.content == first.content
    assert client.delete(f"/images/{item_id}", headers=auth).status_code == 200
    gone = client.get(f"/images/{item_id}/thumbnail", headers={"If-None-Match": etag})
    assert_error(gone, 404, "not_found")


def test_a_write_without_the_key_is_refused_before_its_body_is_read(client: TestClient) -> None:
    # A body that would fail parsing: the refusal must be about the key, not the body.
    response = client.post(
        "/index",
        content=b"--x\r\nnot a multipart body",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert_error(response, 401, "missing_api_key")
