"""Serving a sharded index on Ray Serve: the same FastAPI app, its work spread over a cluster.

Deployments (``histosearch serve --ray auto|ADDRESS --index <sharded index>``):

- ``histosearch``: the ingress, the very app of `service.app.create_app` (same endpoints, errors,
  limits and page). One replica: it owns the index's id counter (``shards.json``), so that ids
  stay one sequence; it only decodes uploads and merges results, the heavy parts live below.
- ``embedder``: the model (`indexer.index.ray_cluster.EmbeddingActor`, the actor ingest on Ray
  uses too), as many replicas as asked for (a GPU each when the cluster has GPUs). Only for an
  index of images: a feature index (vectors a foundation model produced) has no pixels to embed,
  and its queries, vectors or an item's stored code, are encoded by its feature model's head in
  the ingress (`model.feature_encoder.FeatureEncoder`: a centring and one small matrix product,
  cheaper than the round trip to another replica would be).
- ``shard-000`` ... ``shard-S``: one per shard, each holding that shard's codes and SQLite file in
  its own process. One replica each: a shard has exactly one writer.

A search embeds the query on an embedder replica (or encodes a feature vector in the ingress),
asks every shard for its k best (with their
codes) and merges them exactly as `indexer.index.shards.ShardedIndex` does in one process: the
ingress's index *is* a `ShardedIndex`, whose shards are clients of the shard deployments. An add
goes to its group's shard and is acknowledged once that shard's SQLite commit returned. /stats
and /ready count every shard.

Every node must see the index directory under the same path (a shared filesystem).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.index.metadata import FinishedSource, SlideRow
from indexer.index.pq import CodeArray, FloatArray
from indexer.index.ray_cluster import EmbeddingActor, cluster_node_cpus, connect
from indexer.index.records import ItemRecord, NewItem
from indexer.index.shards import LocalShard, ShardAnswer, ShardedIndex
from indexer.index.store import AddOutcome, IndexStats, SearchFilters
from service.engine import ImageEmbedder, SearchEngine, engine_from_settings
from service.errors import ErrorCode, ServiceError
from service.settings import Settings

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

logger = logging.getLogger(__name__)

# Handles the ingress replica was built with; its start-up (the app's lifespan, in the same
# process) reads them. A module global because Serve copies the FastAPI app into the replica.
_REPLICA_HANDLES: dict[str, Any] = {}
# Seconds a client is told to wait before repeating a request that a lost shard replica refused
# (Serve starts another replica, which reopens the shard's files).
SHARD_RETRY_AFTER_S = 2
# CPUs of a shard or ingress replica on a cluster without GPUs: fractions fit a small machine.
SMALL_REPLICA_CPUS = 0.25
# CPUs an embedder leaves free on its node for shard and ingress replicas: on 2-CPU nodes an
# embedder of 2 CPUs fits only a node with nothing else on it.
SMALL_REPLICAS_ROOM = 0.5


@dataclass(frozen=True, slots=True)
class RayServeConfig:
    """Replicas and the resources each asks for (fractions of a CPU fit a small machine)."""

    embedder_replicas: int = 1
    embedder_cpus: float = 1.0
    embedder_gpus: float = 0.0
    shard_cpus: float = 0.5
    ingress_cpus: float = 0.5


# ---- the shard deployment and its client -------------------------------------------------------


class ShardReplica:
    """One shard of the index, opened in this replica's process."""

    def __init__(self, directory: str) -> None:
        self._index = LocalShard.open_shard(Path(directory))

    def describe(self) -> tuple[FloatArray, int]:
        return self._index.codebooks, self._index.descriptor_dim

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one of the shard's methods, or read a property (a value that is not callable);
        a dotted name reaches through attributes (``journal.finished_source``)."""
        value = reduce(getattr, method.split("."), self._index)
        return value(*args, **kwargs) if callable(value) else value

    def __del__(self) -> None:
        index = getattr(self, "_index", None)
        if index is not None:
            index.close()


class ShardClient:
    """A `Shard` whose methods run on a shard deployment (blocking: call from worker threads)."""

    def __init__(self, handle: DeploymentHandle[Any], name: str) -> None:
        self._handle = handle
        self.name = name
        self.codebooks, self.descriptor_dim = handle.describe.remote().result()
        self._tombstones = int(self._call("tombstones"))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            return self._handle.call.remote(method, args, kwargs).result()
        except (RayActorError, BackPressureError, DeploymentUnavailableError) as error:
            # The shard's replica was lost (Serve starts another from the same files) or is
            # overloaded: the request may be repeated. A write that got here may or may not have
            # committed; repeated, it is either added or reported as the duplicate it now is.
            logger.warning("shard %s unavailable for %s: %s", self.name, method, error)
            raise ServiceError(
                503,
                ErrorCode.NOT_READY,
                f"{self.name} of the index is unavailable (restarting); retry the request",
                headers={"Retry-After": str(SHARD_RETRY_AFTER_S)},
            ) from error

    def answer(
        self,
        queries: npt.NDArray[np.floating],
        k: int,
        filters: SearchFilters | None,
        with_codes: bool,
    ) -> ShardAnswer:
        answer: ShardAnswer = self._call("answer", queries, k, filters, with_codes)
        self._tombstones = answer.tombstones
        return answer

    def records_of(self, item_ids: Sequence[int]) -> list[ItemRecord]:
        records: list[ItemRecord] = self._call("records_of", list(item_ids))
        return records

    @property
    def tombstones(self) -> int:
        """The count the shard gave with its last answer (asking would cost a round trip)."""
        return self._tombstones

    def add_codes(
        self,
        codes: npt.NDArray[np.integer],
        records: Sequence[NewItem],
        *,
        item_ids: Sequence[int] | None = None,
    ) -> list[AddOutcome]:
        outcomes: list[AddOutcome] = self._call(
            "add_codes", codes, list(records), item_ids=item_ids
        )
        return outcomes

    def remove(self, item_ids: Sequence[int]) -> int:
        removed = int(self._call("remove", list(item_ids)))
        self._tombstones += removed
        return removed

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        """Snapshot the shard; its replica keeps it open until the deployment stops."""
        self._call("flush")

    def get(self, item_id: int) -> ItemRecord | None:
        record: ItemRecord | None = self._call("get", item_id)
        return record

    def codes_of(self, item_ids: npt.ArrayLike) -> CodeArray:
        """(N, M) stored codes of the given ids: "more like this" in a feature index."""
        codes: CodeArray = self._call("codes_of", np.asarray(item_ids, dtype=np.int64))
        return codes

    def thumbnail(self, item_id: int) -> bytes | None:
        thumbnail: bytes | None = self._call("thumbnail", item_id)
        return thumbnail

    def scores_of(
        self, query: npt.NDArray[np.floating], item_ids: Sequence[int]
    ) -> list[float | None]:
        scores: list[float | None] = self._call("scores_of", query, list(item_ids))
        return scores

    def slide_rows(self) -> list[SlideRow]:
        """Every item's slide, group and code: slide and case search reads each shard's."""
        rows: list[SlideRow] = self._call("slide_rows")
        return rows

    def content_state(self) -> tuple[int, ...]:
        state: tuple[int, ...] = self._call("content_state")
        return state

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        known: dict[str, int] = self._call("known_hashes", list(hashes))
        return known

    @property
    def journal(self) -> ShardJournalClient:
        return ShardJournalClient(self._call)

    def check_model(self, codebooks: npt.NDArray[np.floating]) -> None:
        self._call("check_model", codebooks)

    @property
    def card(self) -> dict[str, Any]:
        card: dict[str, Any] = self._call("card")
        return card

    @property
    def checkpoint_path(self) -> Path | None:
        path: Path | None = self._call("checkpoint_path")
        return path

    def __len__(self) -> int:
        return int(self._call("__len__"))

    @property
    def unsaved_changes(self) -> int:
        return int(self._call("unsaved_changes"))

    def stats(self) -> IndexStats:
        stats: IndexStats = self._call("stats")
        return stats


class ShardJournalClient:
    """A `SourceJournal` whose calls run on the journal of a shard deployment's index."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def finished_source(self, source: str) -> str | None:
        found: str | None = self._call("journal.finished_source", source)
        return found

    def source_with_hash(self, file_hash: str) -> str | None:
        found: str | None = self._call("journal.source_with_hash", file_hash)
        return found

    def mark_sources_finished(self, finished: Sequence[FinishedSource]) -> None:
        self._call("journal.mark_sources_finished", list(finished))


def remote_embedder(handle: DeploymentHandle[Any]) -> ImageEmbedder:
    """The engine's embedding function, run by the embedder deployment."""

    def embed(images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        descriptors = handle.embed.remote(list(images)).result()
        return np.ascontiguousarray(descriptors, dtype=np.float32)

    return embed


# ---- the ingress ---------------------------------------------------------------------------------


class HistosearchIngress:
    """The FastAPI app's replica; `serve.ingress` wraps it around `create_app`'s app."""

    def __init__(
        self, embedder: DeploymentHandle[Any] | None, shards: list[DeploymentHandle[Any]]
    ) -> None:
        _REPLICA_HANDLES["embedder"] = embedder
        _REPLICA_HANDLES["shards"] = shards


def load_ray_engine(settings: Settings) -> SearchEngine:
    """The app's start-up in the ingress replica: the sharded index over the shard deployments.

    Images are embedded by the embedder deployment; a feature index has none, and its model
    (loaded here as the plain server loads it) encodes the query vectors in this replica.
    """
    import torch

    from indexer.index.store import IndexDirectoryError
    from model import ModelCard
    from model.checkpoint import load_index_model

    shard_handles: list[DeploymentHandle[Any]] = _REPLICA_HANDLES["shards"]
    by_name = {f"shard-{number:03d}": handle for number, handle in enumerate(shard_handles)}

    def open_shard(directory: Path) -> ShardClient:
        return ShardClient(by_name[directory.name], directory.name)

    index = ShardedIndex.open(settings.index_dir, open_shard=open_shard, parallel=True)
    if index.checkpoint_path is None:
        raise IndexDirectoryError(f"{settings.index_dir} has no model.pt to embed queries with")
    # The ingress keeps a CPU copy of the model: for its card and the codebook check, and for a
    # feature index the head that encodes query vectors.
    card = ModelCard.model_validate(index.card)
    model = load_index_model(index.checkpoint_path, expected_card=card, map_location="cpu")
    index.check_model(model.codebooks().detach().cpu().numpy())
    embedder: DeploymentHandle[Any] | None = _REPLICA_HANDLES["embedder"]
    logger.info(
        "serving %s on Ray: %d shards, %d items", settings.index_dir, len(index.shards), len(index)
    )
    return engine_from_settings(
        settings,
        model,
        index,
        torch.device("cpu"),
        embed=None if embedder is None else remote_embedder(embedder),
    )


def build_application(settings: Settings, config: RayServeConfig | None = None) -> Application:
    """The Serve application: ingress, embedder and one deployment per shard."""
    from ray import serve

    from indexer.index.shards import ShardedIndexError, is_sharded, read_shards_manifest
    from service.app import create_app

    config = config or RayServeConfig()
    if not is_sharded(settings.index_dir):
        raise ShardedIndexError(
            f"{settings.index_dir} is not a sharded index: build one with histosearch index "
            "--shards, or serve it without --ray"
        )
    manifest = read_shards_manifest(settings.index_dir)
    if manifest.get("second_stage") is not None:
        # The re-rank reads each shard's memory-mapped fine codes in the searching process.
        raise ShardedIndexError(
            f"{settings.index_dir} has a second stage, which is searched with its shards in one "
            "process: serve it without --ray (histosearch serve), or build the Ray index "
            "without --second-stage"
        )
    names: list[str] = list(manifest["shards"])
    embedder = None
    if not holds_features(settings.index_dir / names[0]):
        checkpoint = settings.index_dir / names[0] / "model.pt"
        device = "cuda" if config.embedder_gpus else "cpu"
        embedder = serve.deployment(
            name="embedder",
            num_replicas=config.embedder_replicas,
            ray_actor_options={"num_cpus": config.embedder_cpus, "num_gpus": config.embedder_gpus},
        )(EmbeddingActor).bind(str(checkpoint), device)
    shards = [
        serve.deployment(
            name=name, num_replicas=1, ray_actor_options={"num_cpus": config.shard_cpus}
        )(ShardReplica).bind(str(settings.index_dir / name))
        for name in names
    ]
    app = create_app(settings, engine_loader=load_ray_engine)
    ingress = serve.deployment(
        name="histosearch", num_replicas=1, ray_actor_options={"num_cpus": config.ingress_cpus}
    )(serve.ingress(app)(HistosearchIngress))
    return ingress.bind(embedder, shards)


def holds_features(shard: Path) -> bool:
    """Whether an index directory holds feature vectors (its card names an input length) rather
    than images: then there is nothing for an image embedder to do."""
    from indexer.index.store import CARD, IndexDirectoryError
    from model import ModelCard

    try:
        card = ModelCard.model_validate_json((shard / CARD).read_bytes())
    except (OSError, ValueError) as error:
        raise IndexDirectoryError(f"{shard / CARD} cannot be read: {error}") from error
    return card.input_dim > 0


def plan_replicas(
    resources: dict[str, float], embedder_replicas: int | None, node_cpus: Sequence[float] = ()
) -> RayServeConfig:
    """Replica resources for a cluster with these total resources (`ray.cluster_resources`) and
    these CPUs on each node (`cluster_node_cpus`; one node of all the CPUs when not given): a GPU
    per embedder where there are GPUs.

    An embedder must fit on one node: sized from the cluster's total alone, 2 embedders on five
    2-CPU nodes (`docker compose --profile ray up --scale ray-worker=3`) ask for 2.5 CPUs each,
    which no node holds: Ray keeps such a request pending for ever, and the service never gets
    ready.
    """
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if gpus:
        return RayServeConfig(embedder_replicas or gpus, 1.0, 1.0)
    replicas = embedder_replicas or max(1, int(cpus // 4))
    largest_node = max(node_cpus, default=cpus)
    # Small machines: fractions, so that ingress, shards and embedders all fit; on the largest
    # node, room for the small replicas beside an embedder.
    share = max(0.25, min(4.0, cpus / (2 * replicas), largest_node - SMALL_REPLICAS_ROOM))
    return RayServeConfig(replicas, share, 0.0, SMALL_REPLICA_CPUS, SMALL_REPLICA_CPUS)


# ---- running it ----------------------------------------------------------------------------------


def serve_on_ray(
    settings: Settings, address: str, host: str, port: int, embedders: int | None
) -> None:
    """Deploy the app on the cluster and keep it up until interrupted (Ctrl-C)."""
    import ray
    from ray import serve

    connect(address)
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    config = plan_replicas(resources, embedders, cluster_node_cpus())
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_application(settings, config), name="histosearch", route_prefix="/")
        logger.info(
            "serving %s on Ray Serve at http://%s:%d (%s)", settings.index_dir, host, port, config
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
