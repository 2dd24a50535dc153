"""Encoding on a real local Ray cluster survives losing its embedding actor's process mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from indexer.index.shards import ShardedIndex
from indexer.index.tiling import TilingConfig
from indexer.ingest.distributed import RayEncodingConfig, encode_archive_on_ray
from indexer.ingest.pipeline import PipelineConfig
from indexer.ingest.sources import ArchiveImage, load_folder
from model import ModelCard, build_model, save_checkpoint
from support.data import SHARED_DATA
from tests.indexer.ingest.test_distributed import contents, counts, single_process_index

pytestmark = pytest.mark.ray

PCAM = SHARED_DATA / "pcam-96px-7k"
# Enough 96 px tiles that most are still to be embedded when the first batches are stored.
IMAGES = 240
CONFIG = PipelineConfig(
    tiling=TilingConfig(tile_size=96, min_tissue=0.25), batch_size=8, progress=False
)
# Ray Data names each embedding actor's class "MapWorker(MapBatches(EmbeddingActor))".
MAP_WORKER = "MapBatches(EmbeddingActor)"
# Generous: only a run that hangs for good takes this long.
DEADLINE_S = 300.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(build_model(ModelCard(input_size=64)), path)
    return path


@pytest.fixture(scope="module")
def archive() -> list[ArchiveImage]:
    if not (PCAM / "labels.csv").is_file():
        pytest.skip("the PCam tiles are missing from ../shared/data")
    return load_folder(PCAM)[:IMAGES]


def live_actors(class_name: str) -> dict[str, dict[str, Any]]:
    """ALIVE actors of a class, by actor id, from the cluster's control store (GCS).

    `ray.util.state` asks the dashboard, which the test cluster does not start; the GCS table it
    reads from answers without it and names each actor's process id.
    """
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors()
    return {
        actor_id: actor
        for actor_id, actor in table.items()
        if class_name in str(actor["ActorClassName"]) and actor["State"] == "ALIVE"
    }


def restarts_of(actor_id: str) -> int:
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors()
    return int(table[actor_id]["NumRestarts"])


@dataclass
class ActorKiller:
    """Kills the embedding actor's process (SIGKILL: no clean-up runs, as when a node is lost)
    once the index holds ``after_items`` items, from a thread beside the run."""

    index: ShardedIndex
    after_items: int
    killed_pid: int | None = None
    killed_actor: str | None = None
    items_at_kill: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not self.done.is_set() and time.monotonic() < deadline:
            actors = live_actors(MAP_WORKER)
            if actors and len(self.index) >= self.after_items:
                actor_id, actor = next(iter(actors.items()))
                self.items_at_kill = len(self.index)
                os.kill(int(actor["Pid"]), signal.SIGKILL)
                self.killed_pid, self.killed_actor = int(actor["Pid"]), actor_id
                return
            time.sleep(0.02)


def test_a_killed_embedding_actor_is_restarted_and_every_image_is_indexed_once_as_in_one_process(
    tmp_path, ray_cluster, checkpoint, archive
):
    single, single_summary = single_process_index(tmp_path / "single", checkpoint, archive)
    with single, ShardedIndex.create(tmp_path / "sharded", checkpoint, 2) as sharded:
        expected = contents(single)
        killer = ActorKiller(sharded, after_items=2 * CONFIG.batch_size)
        thread = threading.Thread(target=killer.run, daemon=True)
        thread.start()
        try:
            summary = encode_archive_on_ray(
                archive, sharded, checkpoint, CONFIG, RayEncodingConfig(actors=1)
            )
        finally:
            killer.done.set()
            thread.join(timeout=60)
        # The kill landed mid-run: some items were stored, most were still to come.
        assert killer.killed_pid is not None and killer.killed_actor is not None
        assert killer.items_at_kill is not None and killer.items_at_kill < len(expected)
        # Ray restarted the actor (the pool's one) rather than the run failing or hanging.
        assert restarts_of(killer.killed_actor) >= 1
        # Nothing lost, nothing twice: the single process's counts, items, ids and codes.
        assert counts(summary) == counts(single_summary)
        assert summary.tiles_duplicate == 0 and summary.tiles_already_indexed == 0
        assert len(sharded) == len(expected) == single_summary.tiles_added
        assert contents(sharded) == expected
        assert sorted(expected) == list(range(1, len(expected) + 1))
