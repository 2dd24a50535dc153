"""A real small index (real Kather tiles, a small randomly initialised SPQ model) and live servers.

The index is built once per session; tests that change it work on copies. Live servers are real
uvicorn processes started through `histosearch serve` on a free loopback port.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from support.live_server import API_KEY as API_KEY
from support.live_server import LiveServer as LiveServer
from support.live_server import free_port as free_port
from support.small_index import SMALL_CARD as SMALL_CARD
from support.small_index import build_small_index
from support.small_index import kather_items as kather_items
from support.small_index import tile_box as tile_box
from tests.service.feature_index import FeatureSample, build_feature_index, require_features
from tests.service.slide_index import archive_roots, build_slide_index

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only template index of the 240 Kather tiles; copy it before changing anything."""
    return build_small_index(tmp_path_factory.mktemp("index") / "kather")


@pytest.fixture()
def index_copy(small_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(small_index, target)
    return target


@pytest.fixture(scope="session")
def live_server(
    small_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One server shared by the tests that tolerate each other's additions."""
    directory = tmp_path_factory.mktemp("live")
    index_dir = directory / "index"
    shutil.copytree(small_index, index_dir)
    server = LiveServer(index_dir, directory / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def feature_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, FeatureSample]]:
    """A server over a small feature index (HIPT region features, no pixels), one per module."""
    source = require_features()
    folder = tmp_path_factory.mktemp("features")
    sample = build_feature_index(folder / "index", source)
    server = LiveServer(sample.index_dir, folder / "server.log").start()
    try:
        yield server, sample
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slide_pair_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, dict[str, Path]]]:
    """A server over the two-slide index (`build_slide_index`), with its slide paths."""
    index_dir, slides = build_slide_index(tmp_path_factory.mktemp("slides"))
    server = LiveServer(index_dir, index_dir.parent / "server.log", env=archive_roots(index_dir))
    server.start()
    try:
        yield server, slides
    finally:
        server.stop()


@contextmanager
def chromium_context(
    profile: Path, viewport: dict[str, int], bypass_csp: bool = False
) -> Iterator[Any]:
    """A headless Debian Chromium (driven by Playwright) with its profile in `profile`."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=viewport,
            bypass_csp=bypass_csp,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def post_search(server: LiveServer, fields: dict[str, str], files: Any = None) -> Any:
    """POST /search on a live server with form `fields` and uploaded `files`."""
    with server.client() as client:
        return client.post("/search", data=fields, files=files)


def npy_bytes(array: npt.NDArray[Any]) -> bytes:
    """`array` as the bytes of an .npy file."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
