"""Serving on a real local Ray cluster survives losing a shard replica's process during adds."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from pydantic import SecretStr

from indexer.index.shards import ShardedIndex, shard_of
from model import Embedder, build_model, save_checkpoint
from service.settings import Settings
from tests.service import samples
from tests.service.conftest import API_KEY, SMALL_CARD, free_port, kather_items

pytestmark = pytest.mark.ray
SHARDS = 2
KILLED_SHARD = 1
ITEMS = 240
LABEL = "streamed"
# Generous: a replica restarting on two loaded cores takes seconds; only a hang takes this long.
DEADLINE_S = 240.0
# Acknowledged adds into the killed shard, after its new replica is up, before the stream stops.
ADDS_AFTER_RESTART = 3


@pytest.fixture(scope="module")
def deployed(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from service.ray_serve import RayServeConfig, build_application

    root = tmp_path_factory.mktemp("ray-serve-faults")
    torch.manual_seed(0)
    model = build_model(SMALL_CARD).eval()
    save_checkpoint(model, root / "model.pt")
    images, items = kather_items()
    with ShardedIndex.create(root / "index", root / "model.pt", SHARDS) as sharded:
        sharded.add(Embedder(model, torch.device("cpu")).embed(images), items)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings(
        index_dir=root / "index", api_key=SecretStr(API_KEY), device="cpu", workers=2
    )
    config = RayServeConfig(embedder_cpus=0.5, shard_cpus=0.25, ingress_cpus=0.25)
    serve.run(build_application(settings, config), name="histosearch", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()  # type: ignore[no-untyped-call]


def replicas_of(deployment: str) -> dict[str, int]:
    """Process ids of the deployment's ALIVE replicas, by actor id, from the cluster's control
    store (GCS): `ray.util.state` asks the dashboard, which the test cluster does not start."""
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors()
    return {
        actor_id: int(actor["Pid"])
        for actor_id, actor in table.items()
        if str(actor["ActorClassName"]).endswith(f":{deployment}") and actor["State"] == "ALIVE"
    }


def groups_of_shard(shard: int, count: int) -> list[str]:
    """``count`` group names that `shard_of` routes to ``shard``."""
    names = (f"patient-{number}" for number in range(10_000))
    return [name for name in names if shard_of(name, "", SHARDS) == shard][:count]


def distinct_upload(number: int) -> bytes:
    """A real tile, one pixel changed so that every upload is a new item."""
    image: Image.Image = samples.tile_rgb(number % ITEMS).copy()
    image.putpixel((0, 0), (number % 256, number // 256 % 256, 17))
    return samples.encode(image, "PNG")


@dataclass
class Acknowledged:
    item_id: int
    group: str
    shard: int
    at: float


@dataclass
class AddStream:
    """Posts one new image at a time, alternating between the shards' groups; an add that fails
    is posted again (the same bytes) until it is acknowledged, as a client should."""

    url: str
    acknowledged: list[Acknowledged] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        groups = {shard: groups_of_shard(shard, 200) for shard in range(SHARDS)}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.url, timeout=120, headers=headers) as client:
            number = 0
            while not self.stop.is_set():
                shard = number % SHARDS
                group = groups[shard][number // SHARDS]
                data = distinct_upload(number)
                while not self.stop.is_set():
                    try:
                        response = client.post(
                            "/index",
                            files={"images": (f"stream-{number}.png", data)},
                            data={"group": group, "label": LABEL},
                        )
                    except httpx.TransportError as error:
                        self.failures.append(f"{number}: {error!r}")
                        time.sleep(0.5)
                        continue
                    if response.status_code in (200, 201):
                        item_id = int(response.json()["items"][0]["id"])
                        self.acknowledged.append(
                            Acknowledged(item_id, group, shard, time.monotonic())
                        )
                        break
                    self.failures.append(f"{number}: {response.status_code} {response.text}")
                    time.sleep(0.5)
                number += 1


def test_a_killed_shard_replica_is_restarted_and_every_acknowledged_add_is_found(deployed):
    killed = f"shard-{KILLED_SHARD:03d}"
    before = replicas_of(killed)
    assert len(before) == 1, before
    stream = AddStream(deployed)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(stream.acknowledged) < 2 * SHARDS and time.monotonic() < deadline:
            time.sleep(0.1)
        acknowledged_before_kill = len(stream.acknowledged)
        assert acknowledged_before_kill >= 2 * SHARDS, stream.failures
        (old_pid,) = before.values()
        os.kill(old_pid, signal.SIGKILL)
        # Serve notices the lost replica and starts another, in a new process.
        after: dict[str, int] = {}
        while time.monotonic() < deadline:
            after = {k: pid for k, pid in replicas_of(killed).items() if pid != old_pid}
            if after:
                break
            time.sleep(0.2)
        assert after, f"no new replica of {killed}; failures: {stream.failures}"
        restarted_at = time.monotonic()

        def into_new_replica() -> int:
            return sum(
                ack.shard == KILLED_SHARD and ack.at > restarted_at for ack in stream.acknowledged
            )

        while into_new_replica() < ADDS_AFTER_RESTART and time.monotonic() < deadline:
            time.sleep(0.1)
        assert into_new_replica() >= ADDS_AFTER_RESTART, stream.failures
    finally:
        stream.stop.set()
        thread.join(timeout=180)
    assert not thread.is_alive()

    acknowledged = {ack.item_id: ack for ack in stream.acknowledged}
    assert len(acknowledged) <= 100  # all of them fit in one search's k
    with httpx.Client(base_url=deployed, timeout=120) as client:
        for item_id, ack in acknowledged.items():
            record = client.get(f"/images/{item_id}")
            assert record.status_code == 200, (item_id, record.text)
            assert record.json()["group"] == ack.group and record.json()["label"] == LABEL
        query = {"image": ("q.png", distinct_upload(0))}
        found = client.post("/search", files=query, data={"k": "100", "label": LABEL})
        assert found.status_code == 200, found.text
        assert {hit["id"] for hit in found.json()["results"]} == set(acknowledged)
        # Nothing stored twice or left over: every shard counts exactly the acknowledged items.
        assert client.get("/stats").json()["items"] == ITEMS + len(acknowledged)
        assert client.get("/ready").json()["items"] == ITEMS + len(acknowledged)
