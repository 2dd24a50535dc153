"""The web page in real headless Chromium against a real server: search, filter, inspect, errors.

Traffic goes to 127.0.0.1 only; Chromium starts with the flags that keep it off the network.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service import samples
from tests.service.conftest import LiveServer, chromium_context

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Set to a path (e.g. docs/screenshot-search.png) to keep the results screenshot; tests never
# write into the repository by default.
SCREENSHOT_ENV = "HISTOSEARCH_KEEP_SCREENSHOT"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The page's own CSP forbids eval, which Playwright's wait_for_function relies on.
    viewport = {"width": 1280, "height": 860}
    with chromium_context(
        tmp_path_factory.mktemp("chromium-profile"), viewport, bypass_csp=True
    ) as context:
        yield context.new_page()


@pytest.fixture(scope="module")
def query_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "tumour-query.png"
    path.write_bytes(samples.encode(samples.tile_rgb(12), "PNG"))
    return path


def test_search_page_shows_results_and_where_a_hit_came_from(
    live_server: LiveServer, page: Any, query_file: Path, tmp_path: Path
) -> None:
    page.goto(live_server.url)
    page.wait_for_selector("#archive-stats:has-text('tiles')")
    # The label filter offers the archive's labels before any search.
    labels = page.eval_on_selector_all(
        "#known-labels option", "options => options.map(o => o.value)"
    )
    assert "07_ADIPOSE" in labels
    page.set_input_files("#file-input", str(query_file))
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 12")
    assert page.is_hidden("#error")
    assert "embed" in page.text_content("#status")
    first_label = page.text_content("#results li:first-child .label")
    assert first_label == "01_TUMOR"
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    if keep := os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=keep)

    page.click("#results li:nth-child(2) .hit")
    page.wait_for_selector("#detail[open]")
    position = page.text_content("#position-text")
    assert position is not None and position.startswith("Tile 150\N{MULTIPLICATION SIGN}150 at (")
    assert page.is_visible("#tile-box")
    assert "CRC-Prim-HE" in (page.text_content("#detail-fields") or "")
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail[open]", state="detached")


def test_label_filter_and_k_narrow_the_results(
    live_server: LiveServer, page: Any, query_file: Path
) -> None:
    page.goto(live_server.url)
    page.set_input_files("#file-input", str(query_file))
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 12")
    page.fill("#k-input", "5")
    page.fill("#label-input", "07_ADIPOSE")
    page.click("#search-button")
    page.wait_for_function(
        "document.querySelectorAll('#results .hit').length === 5 && [...document.querySelectorAll("
        "'#results .label')].every(label => label.textContent === '07_ADIPOSE')"
    )


def test_a_bad_file_shows_a_clear_error(live_server: LiveServer, page: Any, tmp_path: Path) -> None:
    page.goto(live_server.url)
    bad = tmp_path / "notes.png"
    bad.write_bytes(samples.NOT_AN_IMAGE)
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error") or ""
    assert "not a supported image" in message
    assert page.locator("#results .hit").count() == 0


def test_dropping_a_file_on_the_page_searches_it(
    live_server: LiveServer, page: Any, query_file: Path
) -> None:
    page.goto(live_server.url)
    encoded = base64.b64encode(query_file.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    assert "dragging" in (page.get_attribute("#drop-zone", "class") or "")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 12")
    assert "dropped.png" in (page.text_content("#query-info") or "")
    assert page.is_visible("#query-preview")
