"""Slide search in the slide viewer, in real headless Chromium under the page's own Content
Security Policy: "Find similar slides" asks POST /search with the whole slide, lists the ranked
slides, and opening one shows it with its matching regions (the answer's evidence) outlined."""

from __future__ import annotations

import pytest

from tests.service import test_slide_viewer_browser as viewer_tests
from tests.service.test_slide_viewer_browser import slide_items

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The viewer tests' page: the server's CSP in force, console errors and responses recorded.
strict_page = viewer_tests.strict_page


def test_a_ranked_slide_opens_with_its_matching_regions_outlined(slide_pair_server, strict_page):
    server, _ = slide_pair_server
    items = slide_items(server)
    (query_slide, other_slide) = sorted(items)
    page = strict_page
    page.goto(f"{server.url}/static/slide.html?id={query_slide}")
    page.wait_for_selector("body[data-viewer-open='true']", timeout=30_000)
    page.click("#similar-button")
    page.wait_for_selector("body[data-similar-searches='1']", timeout=30_000)
    assert page.locator("#error").is_hidden()
    links = page.locator("#similar-results a")
    assert links.count() == 1  # the query slide's own patient is left out
    assert other_slide in links.first.inner_text()
    assert "left out" in page.locator("#similar-status").inner_text()
    href = links.first.get_attribute("href") or ""
    evidence = [int(i) for i in href.split("items=")[1].split(",")]
    assert evidence and set(evidence) <= set(items[other_slide])
    links.first.click()
    page.wait_for_selector(f"body[data-outlined='{len(evidence)}']", timeout=30_000)
    outlined = page.locator(".slide-hit")
    assert outlined.count() == len(evidence)
    assert {int(outlined.nth(i).get_attribute("data-item") or 0) for i in range(len(evidence))} == (
        set(evidence)
    )
    assert not [e for e in page.console_errors if "Content Security Policy" in e]


def test_case_ranking_from_the_viewer_lists_cases(slide_pair_server, strict_page):
    server, _ = slide_pair_server
    query_slide = sorted(slide_items(server))[0]
    page = strict_page
    page.goto(f"{server.url}/static/slide.html?id={query_slide}")
    page.wait_for_selector("body[data-viewer-open='true']", timeout=30_000)
    page.select_option("#similar-group-by", "group")
    page.select_option("#similar-aggregation", "vote")
    page.click("#similar-button")
    page.wait_for_selector("body[data-similar-searches='1']", timeout=30_000)
    entries = page.locator("#similar-results li")
    assert entries.count() == 1 and "case" in entries.first.inner_text()
    assert "cases like this one" in page.locator("#similar-status").inner_text()
