"""The web page over a feature archive, in real headless Chromium against a real server: it offers
a vector field and an .npy chooser instead of the image drop zone, and shows hits as text cards
that say there are no pixels, never as broken images."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support.live_server import LiveServer
from tests.service.feature_index import FeatureSample
from tests.service.test_page_browser import page as page  # the Chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NO_PIXELS = "feature archive: no pixels to show"


def no_broken_images(page: Any) -> None:
    broken = page.eval_on_selector_all(
        "#results img", "images => images.filter(img => !img.complete || !img.naturalWidth).length"
    )
    assert broken == 0
    assert page.locator("#results img").count() == 0


def test_a_feature_archive_is_searched_by_a_pasted_vector_and_shown_as_text(
    feature_server: tuple[LiveServer, FeatureSample], page: Any, tmp_path: Path
) -> None:
    server, sample = feature_server
    page.goto(server.url)
    page.wait_for_selector("#archive-stats:has-text('feature archive')")
    assert page.is_hidden("#drop-zone") and page.is_visible("#vector-input")
    assert "192" in (page.text_content("#vector-help") or "")
    page.fill("#vector-input", json.dumps(sample.vectors[42].tolist()))
    page.click("#search-button")
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 12")
    assert page.is_hidden("#error")
    cards = page.locator("#results .hit.text-card")
    assert cards.count() == 12
    assert (cards.first.locator(".no-pixels").text_content() or "") == NO_PIXELS
    slide_texts = page.eval_on_selector_all(
        "#results .slide-id", "spans => spans.map(span => span.textContent)"
    )
    assert any(text.startswith(sample.slide_ids[42]) and "row 42" in text for text in slide_texts)
    no_broken_images(page)
    page.screenshot(path=str(tmp_path / "feature-results.png"), full_page=True)

    page.click("#results li:first-child .hit")
    page.wait_for_selector("#detail[open]")
    assert page.is_hidden("#detail-thumb")
    assert NO_PIXELS in (page.text_content("#position-text") or "")
    assert "slide" in (page.text_content("#detail-fields") or "")


def test_an_npy_of_rows_is_answered_row_by_row_on_the_page(
    feature_server: tuple[LiveServer, FeatureSample], page: Any, tmp_path: Path
) -> None:
    server, sample = feature_server
    buffer = io.BytesIO()
    np.save(buffer, sample.vectors[[1, 400]])
    rows = tmp_path / "two-rows.npy"
    rows.write_bytes(buffer.getvalue())
    page.goto(server.url)
    page.wait_for_selector("#archive-stats:has-text('feature archive')")
    page.fill("#k-input", "4")
    page.set_input_files("#vectors-input", str(rows))
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 8")
    headings = page.eval_on_selector_all("#results h2", "hs => hs.map(h => h.textContent)")
    assert headings == ["Row 0", "Row 1"]
    assert "2 rows" in (page.text_content("#query-info") or "")
    no_broken_images(page)


def test_a_vector_of_the_wrong_length_shows_the_servers_reason(
    feature_server: tuple[LiveServer, FeatureSample], page: Any
) -> None:
    server, _ = feature_server
    page.goto(server.url)
    page.wait_for_selector("#archive-stats:has-text('feature archive')")
    page.fill("#vector-input", "[0.1, 0.2, 0.3]")
    page.click("#search-button")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error") or ""
    assert "got 3" in message and "192" in message
