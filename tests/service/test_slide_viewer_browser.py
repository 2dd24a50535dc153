"""The slide viewer in real headless Chromium, under the page's own Content Security Policy:
OpenSeadragon (vendored, served by the service) loads Deep Zoom tiles and outlines the hits, and
the search page links each ranked slide to it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openslide
import pytest

from tests.service.conftest import LiveServer, chromium_context

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def strict_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A page that keeps the server's CSP in force, and records console errors and responses."""
    profile = tmp_path_factory.mktemp("chromium-viewer")
    with chromium_context(profile, {"width": 1200, "height": 800}) as context:
        page = context.new_page()
        page.console_errors = []
        page.responses = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("response", lambda r: page.responses.append((r.url, r.status)))
        yield page


def slide_items(server: LiveServer) -> dict[str, list[int]]:
    """Slide id -> its item ids."""
    found: dict[str, list[int]] = {}
    with server.client() as client:
        for item_id in range(1, 40):
            response = client.get(f"/images/{item_id}")
            if response.status_code == 200:
                found.setdefault(response.json()["extra"]["slide_id"], []).append(item_id)
    return found


def test_viewer_shows_the_deep_zoom_pyramid_and_outlines_the_hits(slide_pair_server, strict_page):
    server, _ = slide_pair_server
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


def test_viewer_says_so_for_an_unknown_slide(slide_pair_server, strict_page):
    server, _ = slide_pair_server
    strict_page.goto(f"{server.url}/static/slide.html?id=ffffffffffffffff")
    strict_page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "no slide with id" in strict_page.locator("#error").inner_text()


def test_search_page_links_ranked_slides_to_the_viewer(
    slide_pair_server, strict_page, tmp_path: Path
):
    server, slides = slide_pair_server
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


def region_requests(page: Any) -> list[dict[str, str]]:
    """The multipart fields of every POST /search the page sent."""
    found = []
    for request in page.search_posts:
        body = request.post_data_buffer or b""
        fields = dict(re.findall(rb'name="([a-z_]+)"\r\n\r\n([^\r]*)\r\n', body))
        found.append({name.decode(): value.decode() for name, value in fields.items()})
    return found


def image_to_page(page: Any, x: float, y: float) -> tuple[float, float]:
    """Page pixels of a level-0 point of the 2400 x 1800 slide in the home (fitted) view."""
    box = page.locator("#viewer").bounding_box()
    scale = min(box["width"] / 2400, box["height"] / 1800)
    left = box["x"] + (box["width"] - 2400 * scale) / 2
    top = box["y"] + (box["height"] - 1800 * scale) / 2
    return left + x * scale, top + y * scale


def slide_a(server: LiveServer) -> str:
    """The id of slide-a, whose tissue cells are those (c, r) with (c + r) % 3 == 0."""
    with server.client() as client:
        for item_id in range(1, 40):
            item = client.get(f"/images/{item_id}").json()
            if "slide-a" in item.get("source", ""):
                return str(item["extra"]["slide_id"])
    raise AssertionError("no item of slide-a in the index")


def open_viewer(server: LiveServer, page: Any, items: str = "") -> str:
    """slide-a in the viewer, with ``items`` (ids, comma-separated) outlined; returns its id."""
    slide_id = slide_a(server)
    if not hasattr(page, "search_posts"):  # the page is the module's: one listener
        page.on(
            "request",
            lambda r: (
                r.method == "POST" and r.url.endswith("/search") and page.search_posts.append(r)
            ),
        )
    page.search_posts = []
    page.goto(f"{server.url}/static/slide.html?id={slide_id}&items={items}")
    page.wait_for_selector("body[data-viewer-open='true']", timeout=30_000)
    page.wait_for_selector("body[data-tiles-loaded]", timeout=30_000)
    page.wait_for_timeout(1_500)  # the opening zoom animation settles
    return slide_id


def test_clicking_the_slide_searches_with_the_tile_sized_region_centred_there(
    slide_pair_server, strict_page
):
    server, _ = slide_pair_server
    page = strict_page
    slide_id = open_viewer(server, page)
    assert "click" in page.locator("#viewer-help").inner_text()
    page.mouse.click(*image_to_page(page, 1050, 150))  # the centre of tissue cell (3, 0)
    page.wait_for_selector("body[data-region-searches='1']", timeout=30_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert page.locator("#results li").count() == 12
    assert page.locator("#slide-results a").count() >= 1
    assert page.locator("#query-region").count() == 1
    (fields,) = region_requests(page)
    assert fields["slide_id"] == slide_id
    # One index tile: 150 px at 0.5 um/px is 300 level-0 px at 0.25 um/px.
    assert (fields["width"], fields["height"]) == ("300", "300")
    centre = (int(fields["x"]) + 150, int(fields["y"]) + 150)
    assert abs(centre[0] - 1050) <= 12 and abs(centre[1] - 150) <= 12
    assert "Region 300\u00d7300" in page.locator("#status").inner_text()


def test_a_click_on_glass_says_why_and_outlines_only_the_refused_region(
    slide_pair_server, strict_page
):
    server, _ = slide_pair_server
    page = strict_page
    items = slide_items(server)[slide_a(server)][:2]
    open_viewer(server, page, items=",".join(map(str, items)))
    page.wait_for_selector("body[data-outlined='2']", timeout=30_000)
    page.mouse.click(*image_to_page(page, 450, 150))  # cell (1, 0) is bare glass
    page.wait_for_selector("body[data-region-searches='1']", timeout=30_000)
    assert "glass" in page.locator("#error").inner_text()
    assert page.locator("#query-region.refused").count() == 1
    assert page.locator(".slide-hit").count() == 0  # the outlines the page opened with are gone
    assert page.locator("#results li").count() == 0
    assert page.locator("body[data-outlined='0']").count() == 1
    page.mouse.click(*image_to_page(page, 1050, 150))  # tissue again: no longer refused
    page.wait_for_selector("body[data-region-searches='2']", timeout=30_000)
    assert page.locator("#error").is_hidden()
    assert page.locator("#query-region").count() == 1
    assert page.locator("#query-region.refused").count() == 0


def test_shift_dragging_a_rectangle_searches_with_it_cut_into_the_index_tiles(
    slide_pair_server, strict_page
):
    server, _ = slide_pair_server
    page = strict_page
    open_viewer(server, page)
    start, end = image_to_page(page, 0, 0), image_to_page(page, 1200, 600)
    page.keyboard.down("Shift")
    page.mouse.move(start[0] + 1, start[1] + 1)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_selector("body[data-region-searches='1']", timeout=30_000)
    page.wait_for_timeout(700)  # no second search from the click that ends the drag
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    (fields,) = region_requests(page)
    assert abs(int(fields["width"]) - 1200) <= 12 and abs(int(fields["height"]) - 600) <= 12
    # Cells 0-3 x 0-1 of slide-a hold three tissue tiles: (0, 0), (3, 0), (2, 1).
    assert "3 query tiles" in page.locator("#status").inner_text()
    assert page.locator("#results li").count() == 12
    assert page.locator("#query-region").count() == 1


def test_the_viewer_page_says_how_to_build_the_viewer_when_it_is_missing(
    slide_pair_server, strict_page
):
    server, _ = slide_pair_server
    page = strict_page
    slide_id = next(iter(slide_items(server)))
    page.route("**/vendor/openseadragon/openseadragon.min.js", lambda r: r.fulfill(status=404))
    try:
        page.goto(f"{server.url}/static/slide.html?id={slide_id}")
        page.wait_for_selector("#error:not([hidden])", timeout=15_000)
        assert "make vendor-viewer" in page.locator("#error").inner_text()
        assert "2400\u00d71800 px" in page.locator("#slide-meta").inner_text()
    finally:
        page.unroute("**/vendor/openseadragon/openseadragon.min.js")
