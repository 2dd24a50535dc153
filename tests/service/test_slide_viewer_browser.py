"""The slide viewer in real headless Chromium, under the page's own Content Security Policy:
OpenSeadragon (vendored, served by the service) loads Deep Zoom tiles and outlines the hits, and
the search page links each ranked slide to it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openslide
import pytest

from tests.service.conftest import LiveServer
from tests.service.slide_index import archive_roots, build_slide_index
from tests.service.test_page_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_and_slides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    index_dir, slides = build_slide_index(tmp_path_factory.mktemp("viewer"))
    server = LiveServer(index_dir, index_dir.parent / "server.log", env=archive_roots(index_dir))
    server.start()
    try:
        yield server, slides
    finally:
        server.stop()


@pytest.fixture(scope="module")
def strict_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A page that keeps the server's CSP in force, and records console errors and responses."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-viewer")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 800},
        )
        try:
            page = context.new_page()
            page.console_errors = []  # type: ignore[attr-defined]
            page.responses = []  # type: ignore[attr-defined]
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
            page.on("response", lambda r: page.responses.append((r.url, r.status)))
            yield page
        finally:
            context.close()


def slide_items(server: LiveServer) -> dict[str, list[int]]:
    """Slide id -> its item ids."""
    found: dict[str, list[int]] = {}
    with server.client() as client:
        for item_id in range(1, 40):
            response = client.get(f"/images/{item_id}")
            if response.status_code == 200:
                found.setdefault(response.json()["extra"]["slide_id"], []).append(item_id)
    return found


def test_viewer_shows_the_deep_zoom_pyramid_and_outlines_the_hits(server_and_slides, strict_page):
    server, _ = server_and_slides
    slide_id, items = next(iter(slide_items(server).items()))
    page = strict_page
    page.goto(f"{server.url}/static/slide.html?id={slide_id}&items={items[0]},{items[1]}")
    page.wait_for_selector("body[data-outlined='2']", timeout=30_000)
    page.wait_for_selector("body[data-tiles-loaded]", timeout=30_000)
    assert page.locator(".slide-hit").count() == 2
    assert page.locator("#error").is_hidden()
    assert "2400\u00d71800 px" in page.locator("#slide-meta").inner_text()
    tiles = [(url, status) for url, status in page.responses if f"{slide_id}_files/" in url]
    assert tiles and all(status == 200 for _, status in tiles)
    assert any(url.endswith(f"/slides/{slide_id}.dzi") for url, _ in page.responses)
    assert not [url for url, _ in page.responses if not url.startswith(server.url)]
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_viewer_says_so_for_an_unknown_slide(server_and_slides, strict_page):
    server, _ = server_and_slides
    strict_page.goto(f"{server.url}/static/slide.html?id=ffffffffffffffff")
    strict_page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "no slide with id" in strict_page.locator("#error").inner_text()


def test_search_page_links_ranked_slides_to_the_viewer(
    server_and_slides, strict_page, tmp_path: Path
):
    server, slides = server_and_slides
    region = openslide.OpenSlide(str(slides["slide-a"])).read_region((0, 0), 1, (150, 150))
    query = tmp_path / "query.png"
    buffer = io.BytesIO()
    region.convert("RGB").save(buffer, format="PNG")
    query.write_bytes(buffer.getvalue())
    page = strict_page
    page.goto(server.url)
    page.set_input_files("#file-input", str(query))
    page.click("#search-button")
    page.wait_for_selector("#slide-results a", timeout=30_000)
    links = page.locator("#slide-results a")
    assert links.count() == 2
    assert "slide-a" in links.first.inner_text()
    links.first.click()
    page.wait_for_selector("body[data-tiles-loaded]", timeout=30_000)
    assert page.locator(".slide-hit").count() >= 1
