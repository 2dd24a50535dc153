"""`docker compose --profile ray up --scale ray-worker=2` as a user runs it, on a real engine.

In a copy of the working tree with its own .env: build the CPU and `ray` images, start the profile
(the plain stack trains the model and serves the plain index; a Ray head and two workers form a
cluster; `indexer-ray` joins it and encodes the demo archive into a sharded index; `service-ray`
serves that index on Ray Serve), wait for `service-ray`'s health check, search with a demo tile
over HTTP, then `docker compose down -v`.

It adds a second build (the `ray` image) and a cluster to the plain deployment test's ten minutes:
21 minutes more on the 2-core test machine, so it runs only with HISTOSEARCH_CI_DOCKER_RAY=1
(`.ci/run` passes the environment on). Each step's time goes to var/deploy/timings-ray.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

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

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(5400)]

PROJECT = "histosearch-deploy-ray-test"
IMAGE = "histosearch-deploy-ray-test"
TIMINGS = ROOT / "var" / "deploy" / "timings-ray.json"
WORKERS = 2
SHARDS = 4


@dataclass
class RayStack(Stack):
    """The profile's stack: ``url`` is service-ray's, ``plain_url`` the plain service's."""

    plain_url: str = ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayStack]:
    if os.environ.get("HISTOSEARCH_CI_DOCKER_RAY") != "1":
        pytest.skip("the `ray` profile's deployment test runs with HISTOSEARCH_CI_DOCKER_RAY=1")
    clone = clone_for_stack(tmp_path_factory.mktemp("clone"))
    timings = clone.timings
    running: RayStack | None = None
    try:
        bases = prepare_build(clone)
        port, ray_port, api_key = free_port(), free_port(), secrets.token_hex(32)
        env = settings(port, api_key, IMAGE, bases, clone.torch)
        env |= {"HISTOSEARCH_RAY_PUBLISHED_PORT": str(ray_port), "HISTOSEARCH_SHARDS": str(SHARDS)}
        write_env(clone.directory, env)
        running = RayStack(
            [*clone.compose, "--profile", "ray"], PROJECT, clone.directory,
            f"http://127.0.0.1:{ray_port}", api_key, clone.torch.get("TORCH_BUILD", "cpu"),
            timings, f"http://127.0.0.1:{port}",
        )  # fmt: skip
        for service, image in (("indexer", "cpu"), ("ray-head", "ray")):
            started = time.monotonic()
            running("build", service, timeout=2400)
            timings[f"build_{image}_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        running("up", "-d", "--scale", f"ray-worker={WORKERS}", timeout=1800)
        timings["up_returned_s"] = round(time.monotonic() - started, 1)
        timings["healthy_after_up_s"] = round(
            timings["up_returned_s"] + wait_healthy(running, "service-ray"), 1
        )
        timings["indexer_job_s"] = job_seconds(running, "indexer")
        timings["indexer_ray_job_s"] = job_seconds(running, "indexer-ray")
        yield running
    finally:
        write_timings(TIMINGS, timings)
        images = [f"{IMAGE}:cpu", f"{IMAGE}:ray"]
        cleanup(running, clone.bases, TIMINGS.parent / "compose-ray.log", images)


def test_the_ray_image_holds_the_ray_version_the_constraints_pin(stack):
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "docker" / "constraints.txt").read_text(), re.M)
    assert pinned, "docker/constraints.txt pins no ray version"
    probe = "import ray; print(ray.__version__)"
    inside = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python",
                  f"{IMAGE}:ray", "-c", probe], timeout=300)  # fmt: skip
    assert inside.stdout.strip() == pinned.group(1)
    for tag in ("cpu", "ray"):
        size = run(["docker", "image", "inspect", "-f", "{{.Size}}", f"{IMAGE}:{tag}"], timeout=60)
        stack.timings[f"image_{tag}_size_gb"] = round(int(size.stdout) / 1e9, 2)


def test_the_head_and_both_workers_are_alive_nodes_of_one_cluster(stack):
    workers = stack.containers("ray-worker")
    assert len(workers) == WORKERS
    assert all(worker["State"]["Status"] == "running" for worker in workers)
    # The head, the workers and service-ray's own node; indexer-ray's node left with its job
    # (Ray counts a node gone a few seconds after its process ended).
    expected, nodes, status = 1 + WORKERS + 1, 0, ""
    for _ in range(30):
        status = stack("exec", "-T", "ray-head", "ray", "status", timeout=120).stdout
        nodes = len(re.findall(r"\bnode_", status.split("Active:")[1].split("Pending:")[0]))
        if nodes == expected:
            break
        time.sleep(2)
    assert nodes == expected, status


def test_the_indexer_job_encoded_the_whole_demo_archive_into_shards_on_the_cluster(stack):
    log = stack("logs", "--no-color", "indexer-ray", timeout=120).stdout
    assert "encoding on Ray with ActorPlan(" in log, log[-4000:]
    demo_tiles = len(list((ROOT / "demo" / "archive").glob("*/*.jpg")))
    assert re.search(rf"tiles added:\s+{demo_tiles}\b", log), log[-4000:]
    manifest = stack(
        "exec", "-T", "service-ray", "cat", "/data/index-sharded/shards.json", timeout=120
    ).stdout
    assert len(json.loads(manifest)["shards"]) == SHARDS
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    for url in (stack.url, stack.plain_url):
        stats = httpx.get(f"{url}/stats", headers=headers, timeout=60)
        assert stats.status_code == 200, stats.text
        assert stats.json()["items"] == demo_tiles


def test_a_demo_tile_searched_through_service_ray_finds_itself_first(stack):
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


def test_down_v_removes_the_cluster_the_jobs_and_the_data_volume(stack):
    stack("down", "-v", timeout=600)
    assert not stack("ps", "-a", "-q", timeout=60).stdout.strip()
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"name={PROJECT}"], timeout=60)
    assert not volumes.stdout.strip(), volumes.stdout
