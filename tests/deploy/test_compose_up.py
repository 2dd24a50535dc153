"""`docker compose up` as a user runs it, on a real Docker engine.

In a copy of the working tree (a clone's files, with its own .env): build the CPU image, start the
stack on the demo archive, wait for the service's health check, search with a demo tile over HTTP,
add an image with the key from .env, restart the stack and find the add again, then
`docker compose down -v`. The training is kept short through the stack's own settings
(HISTOSEARCH_TRAIN_EPOCHS=2 in .env): this checks the deployment, not the model.

Base images come from PYTHON_IMAGE / NODE_IMAGE when given, from Docker Hub when it answers, else
from scripts/debian-base-images (stand-ins from Debian packages). The host's CA bundle is handed to
the build (docker/build-ca/), for networks behind a TLS-inspecting proxy. Skips, saying why, where
no engine answers or Compose is older than 2.24: `.ci/run` starts one where it can. Each step's
time goes to var/deploy/timings.json.
"""

from __future__ import annotations

import io
import json
import secrets
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, ImageOps

from tests.deploy.engine import (
    ROOT,
    run,
)
from tests.deploy.stack import (
    DEMO_TILE,
    Stack,
    cleanup,
    clone_for_stack,
    demo_tile,
    free_port,
    job_seconds,
    prepare_build,
    search,
    settings,
    wait_healthy,
    write_env,
    write_timings,
)

# Bounded so that CI (90 minutes for everything) ends even when a step hangs.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(3600)]

PROJECT = "histosearch-deploy-test"
IMAGE = "histosearch-deploy-test"
TIMINGS = ROOT / "var" / "deploy" / "timings.json"


def _up(stack: Stack) -> dict[str, float]:
    started = time.monotonic()
    stack("up", "-d", timeout=1800)
    up = time.monotonic() - started
    return {"up_returned_s": up, "healthy_after_up_s": up + wait_healthy(stack)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clone = clone_for_stack(tmp_path_factory.mktemp("clone"))
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    timings = clone.timings
    running: Stack | None = None
    try:
        bases = prepare_build(clone)
        port, api_key = free_port(), secrets.token_hex(32)
        write_env(clone.directory, settings(port, api_key, IMAGE, bases, clone.torch))
        running = Stack(
            clone.compose, PROJECT, clone.directory, f"http://127.0.0.1:{port}", api_key,
            clone.torch.get("TORCH_BUILD", "cpu"), timings,
        )  # fmt: skip
        started = time.monotonic()
        running("build", "indexer", timeout=2400)
        timings["build_s"] = round(time.monotonic() - started, 1)
        timings["first_up"] = _up(running)
        timings["indexer_job_s"] = job_seconds(running, "indexer")
        timings["slides_job_s"] = job_seconds(running, "indexer-slides")
        yield running
    finally:
        write_timings(TIMINGS, timings)
        cleanup(running, clone.bases, TIMINGS.parent / "compose.log", [f"{IMAGE}:cpu"])


def test_the_image_is_labelled_with_the_torch_build_it_holds(stack):
    image = f"{IMAGE}:cpu"
    labels = json.loads(run(["docker", "image", "inspect", image], timeout=60).stdout)[0]
    assert labels["Config"]["Labels"]["io.histosearch.torch-build"] == stack.torch_build
    assert "Healthcheck" not in labels["Config"] or not labels["Config"]["Healthcheck"]
    probe = "import torch; print('cpu' if torch.version.cuda is None else 'cuda')"
    inside = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image,
                  "-c", probe], timeout=300)  # fmt: skip
    assert inside.stdout.strip() == stack.torch_build
    size = json.loads(run(["docker", "image", "inspect", image], timeout=60).stdout)[0]["Size"]
    stack.timings["image_size_gb"] = round(size / 1e9, 2)


def test_the_build_certificates_stay_out_of_the_final_image(stack):
    listing = run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", f"{IMAGE}:cpu", "-c",
         "ls -a /tmp /app/docker; env"],
        timeout=300,
    )  # fmt: skip
    assert "build-ca" not in listing.stdout
    assert "PIP_CERT" not in listing.stdout and "NODE_EXTRA_CA_CERTS" not in listing.stdout


def test_only_the_service_is_health_checked_and_on_the_configured_port(stack):
    for job in ("indexer", "indexer-slides"):
        assert "Health" not in stack.container(job)["State"], job
    service = stack.container("service")
    assert service["State"]["Health"]["Status"] == "healthy"
    port = stack.url.rsplit(":", 1)[1]
    assert f"{port}/tcp" in service["NetworkSettings"]["Ports"]
    assert httpx.get(f"{stack.url}/ready", timeout=30).status_code == 200


def test_a_demo_tile_searched_over_http_finds_itself_first(stack):
    tile = demo_tile()
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        response = search(stack.url, tile.read_bytes(), tile.name)
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    first = response.json()["results"][0]
    assert first["exact_copy"] and first["label"] == DEMO_TILE
    stack.timings["search_latency_ms"] = {
        "median": round(1000 * statistics.median(latencies), 1),
        "max": round(1000 * max(latencies), 1),
        "server_reported": response.json()["timings"],
    }


def test_an_image_added_with_the_key_from_env_is_found_after_a_restart(stack):
    mirrored = io.BytesIO()
    ImageOps.mirror(Image.open(demo_tile())).save(mirrored, format="JPEG", quality=95)
    files = {"images": ("mirrored.jpg", mirrored.getvalue(), "image/jpeg")}
    fields = {"label": "ADDED", "group": "deploy-test"}
    refused = httpx.post(f"{stack.url}/index", files=files, data=fields, timeout=120)
    assert refused.status_code == 401
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    added = httpx.post(f"{stack.url}/index", files=files, data=fields, headers=headers, timeout=120)
    assert added.status_code == 201, added.text
    item_id = added.json()["items"][0]["id"]

    stack("restart", "service", timeout=600)
    stack.timings["service_restart_healthy_s"] = wait_healthy(stack)
    assert httpx.get(f"{stack.url}/images/{item_id}", timeout=30).json()["label"] == "ADDED"

    stack("down", timeout=600)  # the containers go, the data volume stays
    stack.timings["second_up"] = _up(stack)
    assert "reusing model" in stack("logs", "--no-color", "indexer", timeout=120).stdout
    found = search(stack.url, mirrored.getvalue(), "mirrored.jpg").json()["results"][0]
    assert found["id"] == item_id and found["exact_copy"]


def test_down_v_removes_the_containers_and_the_data_volume(stack):
    stack("down", "-v", timeout=600)
    assert not stack("ps", "-a", "-q", timeout=60).stdout.strip()
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"name={PROJECT}"], timeout=60)
    assert not volumes.stdout.strip(), volumes.stdout
