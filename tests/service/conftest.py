"""A real small index (real Kather tiles, a small randomly initialised SPQ model) and live servers.

The index is built once per session; tests that change it work on copies. Live servers are real
uvicorn processes started through `histosearch serve` on a free loopback port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from indexer.index.hashing import file_hash
from indexer.index.store import ArchiveIndex, NewItem
from indexer.index.thumbnails import make_thumbnail
from model import ModelCard, build_model, save_checkpoint
from model.preprocess import preprocess
from tests.service import samples

API_KEY = "test-key-0123456789abcdef"
TILE_SIDE = 150
# Kather 2016 file names say where each tile was cut: "..._009.tif_Row_301_Col_151.tif".
_POSITION = re.compile(r"^\w+?_(?P<source>.+?\.tif)_Row_(?P<row>\d+)_Col_(?P<col>\d+)\.tif$")
SMALL_CARD = ModelCard(backbone="resnet18", input_size=64, num_codebooks=8, codebook_size=16)


def tile_box(path: Path) -> tuple[str, tuple[int, int, int, int] | None]:
    match = _POSITION.match(path.name)
    if match is None:
        return path.name, None
    x, y = int(match["col"]) - 1, int(match["row"]) - 1
    return match["source"], (x, y, TILE_SIDE, TILE_SIDE)


def kather_items() -> tuple[list[Image.Image], list[NewItem]]:
    """Every Kather tile with its label, group, position and (lower-bound) source size."""
    rows = samples.kather_tiles()
    boxes = [tile_box(path) for path, _, _ in rows]
    extent: dict[str, tuple[int, int]] = {}
    for source, box in boxes:
        if box is not None:
            width, height = extent.get(source, (0, 0))
            extent[source] = (max(width, box[0] + box[2]), max(height, box[1] + box[3]))
    images, items = [], []
    for (path, label, group), (source, box) in zip(rows, boxes, strict=True):
        data = path.read_bytes()
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        images.append(image)
        items.append(
            NewItem(
                source=f"{group}/{source}",
                content_hash=file_hash(data),
                label=label,
                group=group,
                dataset="kather2016",
                tile=box,
                # The full slide sizes are not published with the tiles: the extent of its tiles.
                source_size=extent.get(source),
                thumbnail=make_thumbnail(image),
            )
        )
    return images, items


def build_small_index(directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(SMALL_CARD).eval()
    checkpoint = directory.parent / f"{directory.name}-model.pt"
    save_checkpoint(model, checkpoint)
    index = ArchiveIndex.create(directory, checkpoint)
    images, items = kather_items()
    with torch.inference_mode():
        descriptors = model.encode(preprocess(images, SMALL_CARD)).numpy().astype(np.float32)
    index.add(descriptors, items)
    index.flush()
    index.close()
    return directory


@pytest.fixture(scope="session")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only template index of the 240 Kather tiles; copy it before changing anything."""
    return build_small_index(tmp_path_factory.mktemp("index") / "kather")


@pytest.fixture()
def index_copy(small_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(small_index, target)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LiveServer:
    """`histosearch serve` in a child process, reachable only on 127.0.0.1."""

    def __init__(self, index_dir: Path, log_path: Path, env: Mapping[str, str] | None = None):
        self.index_dir = index_dir
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "HISTOSEARCH_API_KEY": API_KEY,
            "HISTOSEARCH_WORKERS": "2",
            "HISTOSEARCH_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
            "HISTOSEARCH_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> LiveServer:
        command = [
            sys.executable,
            "-c",
            "from indexer.cli import main; raise SystemExit(main())",
            "serve",
            "--index",
            str(self.index_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self._env, stdout=log, stderr=log)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a power cut or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


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


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
