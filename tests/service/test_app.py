"""The app's start-up around the slide viewer: OpenSeadragon is a build output, and a service
without it still serves the page and says in its log how to build it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.app
from service.app import STATIC_DIR, VIEWER_SCRIPT, create_app, missing_viewer
from service.settings import Settings


def test_a_static_folder_without_openseadragon_is_reported_with_how_to_build_it(tmp_path):
    problem = missing_viewer(tmp_path)
    assert problem is not None
    assert "make vendor-viewer" in problem and str(tmp_path / VIEWER_SCRIPT) in problem
    (tmp_path / VIEWER_SCRIPT).parent.mkdir(parents=True)
    (tmp_path / VIEWER_SCRIPT).write_text("/* built */")
    assert missing_viewer(tmp_path) is None


def test_the_package_viewer_is_built_by_the_build_step():
    # scripts/check and `make install` run scripts/vendor-viewer before the tests.
    assert missing_viewer(STATIC_DIR) is None
    assert (STATIC_DIR / "vendor" / "openseadragon" / "LICENSE.txt").is_file()
    lock = (Path(__file__).parents[2] / "viewer" / "package-lock.json").read_text()
    version = (STATIC_DIR / "vendor" / "openseadragon" / "VERSION").read_text().strip()
    assert f'"version": "{version}"' in lock


def test_a_service_without_the_viewer_logs_how_to_build_it_and_still_serves_the_page(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>histosearch</title>")
    monkeypatch.setattr(service.app, "STATIC_DIR", static)
    with caplog.at_level(logging.WARNING, logger="service.app"):
        app = create_app(Settings(index_dir=tmp_path))
    assert any("make vendor-viewer" in record.getMessage() for record in caplog.records)
    # No lifespan (no index is opened): the page is a static file.
    client = TestClient(app)
    assert client.get("/").status_code == 200
    assert client.get("/static/vendor/openseadragon/openseadragon.min.js").status_code == 404


def test_the_pages_link_an_icon_that_is_served_and_so_is_favicon_ico(tmp_path):
    client = TestClient(create_app(Settings(index_dir=tmp_path)))
    for page in ("index.html", "slide.html"):
        assert (
            '<link rel="icon" type="image/svg+xml" href="/static/favicon.svg">'
            in (STATIC_DIR / page).read_text()
        )
    for path in ("/static/favicon.svg", "/favicon.ico"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.content.lstrip().startswith(b"<svg")
