"""The containers' exact entry points, run on the host with the variables the compose file sets.

The quick check of the images' commands, without building an image (test_compose_up.py runs the
real stack on an engine): `docker/entrypoint.sh index` (the compose indexer job) must train and
index a real archive, a second run must reuse what the first made, and `docker/entrypoint.sh serve`
must answer searches with the compose health check passing on the configured port.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
DEMO = ROOT / "demo" / "archive"
TILES_PER_CLASS = 4

pytestmark = pytest.mark.slow


def _small_archive(target: Path) -> Path:
    """A few demo tiles per class, with their labels.csv, as a user's archive folder."""
    rows = list(csv.DictReader((DEMO / "labels.csv").open()))
    chosen: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        chosen.setdefault(row["label"], [])
        if len(chosen[row["label"]]) < TILES_PER_CLASS:
            chosen[row["label"]].append(row)
    target.mkdir(parents=True)
    with (target / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        for picked in chosen.values():
            for row in picked:
                destination = target / row["path"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes((DEMO / row["path"]).read_bytes())
                writer.writerow(row)
    return target


def _environment(data: Path, archive: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HISTOSEARCH_WORKDIR=str(data),
        HISTOSEARCH_ARCHIVE=str(archive),
        HISTOSEARCH_INDEX_DIR=str(data / "index"),
        HISTOSEARCH_TRAIN_MINUTES="0.5",
        HISTOSEARCH_HOST="127.0.0.1",
        HISTOSEARCH_PORT=str(port),
        HISTOSEARCH_API_KEY="entrypoint-test-key",
        HISTOSEARCH_DEVICE="cpu",
    )
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_index_job(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "index", "--train-epochs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("deployment")
    env = _environment(root / "data", _small_archive(root / "archive"), _free_port())
    first = _run_index_job(env)
    assert first.returncode == 0, first.stderr[-3000:]
    yield env


def test_index_job_trains_a_model_and_builds_the_index(deployment):
    data = Path(deployment["HISTOSEARCH_WORKDIR"])
    assert (data / "model" / "model.pt").is_file()
    assert (data / "index" / "manifest.json").is_file()
    stats = subprocess.run(
        [str(ENTRYPOINT), "stats", "--index", deployment["HISTOSEARCH_INDEX_DIR"]],
        env=deployment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert str(8 * TILES_PER_CLASS) in stats.stdout


def test_second_index_job_reuses_the_model_and_encodes_nothing_again(deployment):
    model = Path(deployment["HISTOSEARCH_WORKDIR"]) / "model" / "model.pt"
    before = model.stat().st_mtime_ns
    second = _run_index_job(deployment)
    assert second.returncode == 0, second.stderr[-3000:]
    assert model.stat().st_mtime_ns == before
    assert "reusing model" in second.stderr
    assert "tiles added:             0" in second.stderr


def test_healthcheck_fails_when_nothing_listens_on_the_configured_port():
    env = {**os.environ, "HISTOSEARCH_PORT": str(_free_port())}
    for target in ("/ready", f"http://127.0.0.1:{env['HISTOSEARCH_PORT']}/ready"):
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK), target], env=env, check=False, timeout=30
        )
        assert result.returncode == 1, target


def test_serve_entrypoint_answers_searches_and_passes_its_health_check(deployment):
    url = f"http://127.0.0.1:{deployment['HISTOSEARCH_PORT']}"
    server = subprocess.Popen(
        [str(ENTRYPOINT), "serve"],
        env=deployment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until_ready(server, deployment)
        tile = next(DEMO.glob("01_TUMOR/*.jpg"))
        with tile.open("rb") as handle:
            response = httpx.post(
                f"{url}/search", files={"image": (tile.name, handle, "image/jpeg")}, timeout=60
            )
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 10
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells its cause.
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in log


def _wait_until_ready(server: subprocess.Popen[str], env: dict[str, str]) -> None:
    """As compose checks the service: `healthcheck.py /ready`, on the port in its environment."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited early: {server.stderr and server.stderr.read()}")
        check = subprocess.run(
            [sys.executable, str(HEALTHCHECK), "/ready"], env=env, check=False, timeout=30
        )
        if check.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("server never became ready")


def test_index_slides_job_adds_the_slides_folder_and_serve_shows_them_in_the_viewer(
    deployment, tmp_path
):
    from support.slide_samples import checkerboard_mosaic, write_mosaic_slide

    env = dict(deployment)
    empty = tmp_path / "no-slides"
    empty.mkdir()
    (empty / "README.md").write_text("slides go here")
    nothing = subprocess.run(
        [str(ENTRYPOINT), "index-slides"],
        env={**env, "HISTOSEARCH_SLIDES": str(empty)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert nothing.returncode == 0 and "no slides to index" in nothing.stdout
    # As the compose file mounts them: a slides folder, and the roots the service reads from.
    slides = tmp_path / "slides"
    (slides / "TUMOR").mkdir(parents=True)
    cells = [(0, 0), (1, 1), (2, 0)]
    write_mosaic_slide(slides / "TUMOR" / "s1.tif", checkerboard_mosaic(900, 600, 300, cells), 0.25)
    env.update(
        HISTOSEARCH_SLIDES=str(slides),
        HISTOSEARCH_SLIDE_TILE_SIZE="150",
        HISTOSEARCH_ARCHIVE_ROOTS=f"{slides},{env['HISTOSEARCH_ARCHIVE']}",
    )
    job = subprocess.run(
        [str(ENTRYPOINT), "index-slides"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    url = f"http://127.0.0.1:{env['HISTOSEARCH_PORT']}"
    server = subprocess.Popen(
        [str(ENTRYPOINT), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_until_ready(server, env)
        region = {"x": "0", "y": "0", "width": "900", "height": "600", "k": "5"}
        unknown = httpx.post(f"{url}/search", data={"slide_id": "0", **region}, timeout=60)
        assert unknown.status_code == 404
        slide_id = _any_slide_id(url)
        assert httpx.get(f"{url}/slides/{slide_id}.dzi", timeout=30).status_code == 200
        found = httpx.post(f"{url}/search", data={"slide_id": slide_id, **region}, timeout=60)
        assert found.status_code == 200, found.text
        assert found.json()["query_tiles"] == len(cells)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def _any_slide_id(url: str) -> str:
    stats = httpx.get(f"{url}/stats", timeout=30).json()
    for item_id in range(stats["items"], 0, -1):
        extra = httpx.get(f"{url}/images/{item_id}", timeout=30).json().get("extra") or {}
        if "slide_id" in extra:
            return str(extra["slide_id"])
    raise AssertionError("no slide tile in the index")
