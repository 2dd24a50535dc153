"""Encoding an archive on a Ray cluster: the pipeline's stages, spread over many machines.

The same stages as `indexer.ingest.pipeline` (and its stage functions, not copies of them):

1. read, decode and tile (`read_image`, `decode_image`, `cut_tiles`): Ray Data CPU tasks, one
   image each, emitting one row per kept tile (its pixels and item record);
2. embed: a Ray Data actor pool, one model per actor (a GPU each when the cluster has GPUs, a
   share of the CPUs otherwise); only descriptors and records leave the actors;
3. write: on the driver, in archive order, batch by batch, each item into its
   group's shard when the index is sharded.

Rows reach the driver in archive order (``preserve_order``), so items get the ids and codes the
single-process run gives for the same archive. Descriptors of one tile may differ from that run's
in the last float bits (CPU kernels sum in an order that depends on the batch: measured at most
2e-7 here), which changes a code only if a sub-vector lies that close to two codewords at once.

Resuming works as in the single-process run: the driver sends each image with the file hash its
finished-source journal holds, and a task that reads the same bytes skips decoding. Tiles already
stored (an image interrupted half-way) are recognised before writing. Files identical to a
finished one are counted as duplicates; unreadable images are reported and the run goes on.

Every node must see the archive and the checkpoint under the paths the driver uses (a shared
filesystem), as a cluster of one machine does.
"""

from __future__ import annotations

import logging
import math
import pickle
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from indexer.index.metadata import FinishedSource
from indexer.index.records import NewItem
from indexer.index.tiling import TilingConfig
from indexer.ingest.archive_root import ArchiveRoot, journal_key
from indexer.ingest.pipeline import (
    UNREADABLE,
    UNREADABLE_FILE,
    IndexingSummary,
    PipelineConfig,
    Tile,
    Unreadable,
    cut_tiles,
    decode_image,
    read_image,
)
from indexer.ingest.sources import ArchiveImage
from model.errors import HistosearchError

if TYPE_CHECKING:
    import ray.data

    from indexer.index.shards import ShardedIndex
    from indexer.index.store import ArchiveIndex

log = logging.getLogger(__name__)

# What a row of the tiling stage says about its image.
TILE, FINISHED, UNREADABLE_IMAGE, NO_TISSUE = "tile", "finished", "unreadable", "no-tissue"
# Seconds to wait for a named cluster's port to answer before giving up on it.
CONNECT_TIMEOUT_S = 5.0
# CPUs each tiling task asks for: fractional, so that on a small machine tiling tasks still fit
# beside the embedding actors (with whole CPUs Ray Data can wait forever for a free one).
TILING_TASK_CPUS = 0.5
# Retries, set here rather than left to Ray Data's defaults (unbounded everywhere), because an
# unbounded retry turns one input that kills its worker every time (a decoder crash, the OOM
# killer on an oversized image) into a run that never ends and never says why:
# - a tiling task whose worker is lost is run again, up to this many times, then the run fails
#   naming the error (finished images are journalled: the next run resumes after them);
TILING_TASK_RETRIES = 3
# - an embedding actor whose process or node is lost is restarted (its model loaded again) with
#   no limit: over a long run on many machines actors are lost for reasons that grow with the
#   run's length (preempted nodes), not with any one input;
EMBEDDING_ACTOR_RESTARTS = -1
# - the batches in flight on a lost actor are sent again to its restarted self, each up to this
#   many times: a batch that killed its actor this often is the input at fault, and the run fails.
EMBEDDING_BATCH_RETRIES = 3


class RayClusterError(HistosearchError):
    """The Ray cluster named could not be reached or cannot run the encoding."""


@dataclass(frozen=True, slots=True)
class RayEncodingConfig:
    """Where and how wide to run: ``address`` is ``auto`` or a cluster address.

    ``auto`` joins the cluster in ``RAY_ADDRESS`` or one running on this machine, else starts a
    local one. ``actors`` defaults to one per GPU, or one per four CPUs (at least one) on a cluster
    without GPUs; ``cpus_per_actor`` to 1 with GPUs, else half the CPUs per actor (at most 8).
    """

    address: str = "auto"
    actors: int | None = None
    cpus_per_actor: float | None = None


@dataclass(frozen=True, slots=True)
class ActorPlan:
    """Resources of the embedding pool, resolved against the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor else "cpu"


def connect(address: str) -> None:
    """Join (or for ``auto`` possibly start) the Ray cluster; fail fast on an unreachable one."""
    import ray

    if address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address == "auto":
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayClusterError(f"cannot join the Ray cluster at {address}: {error}") from error


def _check_reachable(address: str) -> None:
    """Ray retries an absent cluster for a minute or more; one TCP connect answers in seconds."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"{address!r} is not a Ray cluster address (host:port or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise RayClusterError(f"no Ray cluster answers at {address}: {error}") from error


def plan_actors(config: RayEncodingConfig, resources: dict[str, float]) -> ActorPlan:
    """The embedding pool for a cluster with these total resources (`ray.cluster_resources`)."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if gpus:
        return ActorPlan(config.actors or gpus, config.cpus_per_actor or 1.0, 1.0)
    actors = config.actors or max(1, int(cpus // 4))
    # Leave room for at least one tiling task, or the pipeline stalls.
    share = max(0.25, min(8.0, (cpus - TILING_TASK_CPUS) / actors))
    return ActorPlan(actors, config.cpus_per_actor or share, 0.0)


# ---- stage 1-3 on the cluster: one image in, one row per tile out --------------------------------


def _journal_names(image: ArchiveImage, root: ArchiveRoot) -> tuple[str, str]:
    """The finished-source journal's names for an image: relative, and (older journals) the
    absolute path, as the single-process run looks them up."""
    return journal_key(root.name, root.source_of(image.path)), str(image.path)


def _image_row(
    position: int, image: ArchiveImage, index: ArchiveIndex | ShardedIndex, root: ArchiveRoot
) -> dict[str, Any]:
    finished = [index.finished_source(name) for name in _journal_names(image, root)]
    return {
        "position": position,
        "image": pickle.dumps(image),
        "finished_hashes": pickle.dumps([found for found in finished if found]),
    }


def tile_rows(row: dict[str, Any], tiling: TilingConfig, root: str) -> list[dict[str, Any]]:
    """Read, decode and tile one image (the pipeline's stages); a status row if none is kept.

    As in `indexer.ingest.pipeline.prepare`, only reading and decoding may fail as an unreadable
    image; anything tiling raises is a bug and fails the run.
    """
    image: ArchiveImage = pickle.loads(row["image"])
    status = {"position": row["position"], "file_hash": "", "journal_key": ""}
    status |= {"tiles": 0, "background": 0, "reason": "", "payload": b""}
    try:
        raw = read_image(image, ArchiveRoot(Path(root)))
    except UNREADABLE_FILE as error:
        reason = Unreadable.because(image, error).reason
        return [{**status, "kind": UNREADABLE_IMAGE, "reason": reason}]
    if raw.file_hash in pickle.loads(row["finished_hashes"]):
        return [{**status, "kind": FINISHED}]
    try:
        pixels = decode_image(raw)
    except UNREADABLE as error:
        reason = Unreadable.because(image, error).reason
        return [{**status, "kind": UNREADABLE_IMAGE, "reason": reason}]
    tiled = cut_tiles(raw, pixels, tiling)
    status |= {"file_hash": raw.file_hash, "journal_key": raw.journal_key}
    status |= {"tiles": len(tiled.tiles), "background": tiled.background}
    if not tiled.tiles:
        return [{**status, "kind": NO_TISSUE}]
    return [{**status, "kind": TILE, "payload": pickle.dumps(tile)} for tile in tiled.tiles]


# ---- stage 4 on the cluster: an actor per model ----------------------------------------------


class EmbeddingActor:
    """Holds one model; turns a batch of tile rows into rows with descriptors and records."""

    def __init__(self, checkpoint: str, device: str, threads: int) -> None:
        import torch

        from model import Embedder, load_checkpoint

        torch.set_num_threads(max(1, threads))
        target = torch.device(device)
        self._embedder = Embedder(load_checkpoint(Path(checkpoint), map_location=target), target)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        kinds = batch["kind"]
        tiles: list[Tile | None] = [
            pickle.loads(payload) if kind == TILE else None
            for kind, payload in zip(kinds, batch["payload"], strict=True)
        ]
        kept = [tile for tile in tiles if tile is not None]
        descriptors = np.zeros((len(kinds), self._embedder.dim), dtype=np.float32)
        if kept:
            mask = np.array([tile is not None for tile in tiles])
            descriptors[mask] = self._embedder.embed([tile.pixels for tile in kept])
        items = np.empty(len(kinds), dtype=object)
        items[:] = [b"" if tile is None else pickle.dumps(tile.item) for tile in tiles]
        out = {key: value for key, value in batch.items() if key != "payload"}
        return {**out, "item": items, "descriptor": descriptors}


# ---- stage 5 on the driver -----------------------------------------------------------------------


@dataclass(slots=True)
class _Writer:
    """Batches of embedded tiles waiting to be written, and what finishing each image means."""

    index: ArchiveIndex | ShardedIndex
    batch_size: int
    flush_every: int
    summary: IndexingSummary
    items: list[NewItem] = field(default_factory=list)
    descriptors: list[npt.NDArray[np.float32]] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)
    finished: dict[str, FinishedSource] = field(default_factory=dict)
    since_flush: int = 0

    def expect(self, source: str, entry: FinishedSource) -> None:
        self.waiting[source] = self.waiting.get(source, 0) + entry.items
        self.finished[source] = entry

    def queue(self, item: NewItem, descriptor: npt.NDArray[np.float32]) -> None:
        self.items.append(item)
        self.descriptors.append(descriptor)
        if len(self.items) >= self.batch_size:
            self.write()

    def write(self) -> None:
        """Write what is queued (tiles stored before this run are skipped), then journal every
        image whose tiles are all stored, in one commit."""
        if self.items:
            stored = self.index.known_hashes([item.content_hash for item in self.items])
            fresh = [n for n, item in enumerate(self.items) if item.content_hash not in stored]
            self.summary.tiles_already_indexed += len(self.items) - len(fresh)
            if fresh:
                # `write_tiles`'s step, on records whose pixels stayed on the cluster.
                vectors = np.stack([self.descriptors[n] for n in fresh])
                outcomes = self.index.add(vectors, [self.items[n] for n in fresh])
                added = sum(outcome.added for outcome in outcomes)
                self.summary.tiles_added += added
                self.summary.tiles_duplicate += len(fresh) - added
                self.since_flush += added
            for item in self.items:
                self.waiting[journal_key(item.archive, item.source)] -= 1
            self.items, self.descriptors = [], []
        self.finish_sources()
        if self.since_flush >= self.flush_every:
            self.index.flush()
            self.since_flush = 0

    def finish_sources(self) -> None:
        done = [source for source, count in self.waiting.items() if count == 0]
        for source in done:
            del self.waiting[source]
        self.index.mark_sources_finished([self.finished.pop(source) for source in done])


def encode_archive_on_ray(
    images: Sequence[ArchiveImage],
    index: ArchiveIndex | ShardedIndex,
    checkpoint: Path,
    config: PipelineConfig | None = None,
    ray_config: RayEncodingConfig | None = None,
    archive_root: Path | None = None,
) -> IndexingSummary:
    """Index every image of an archive into ``index``, encoding on a Ray cluster.

    Sources are stored relative to ``archive_root`` as by `index_archive`.
    """
    import ray

    config, ray_config = config or PipelineConfig(), ray_config or RayEncodingConfig()
    connect(ray_config.address)
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    plan = plan_actors(ray_config, resources)
    log.info("encoding on Ray with %s", plan)
    started = time.perf_counter()
    summary = IndexingSummary()
    writer = _Writer(index, config.batch_size, config.flush_every, summary)
    root = ArchiveRoot.of([image.path for image in images], archive_root)
    rows = _encoded_rows(images, index, Path(checkpoint).resolve(), config, plan, root)
    for position, image_rows in _progress(_by_image(rows), len(images), config.progress):
        names = _journal_names(images[position], root)
        _take_image(images[position], names, image_rows, index, writer, summary)
    writer.write()
    index.flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _encoded_rows(
    images: Sequence[ArchiveImage],
    index: ArchiveIndex | ShardedIndex,
    checkpoint: Path,
    config: PipelineConfig,
    plan: ActorPlan,
    root: ArchiveRoot,
) -> Iterable[dict[str, Any]]:
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    inputs = [_image_row(position, image, index, root) for position, image in enumerate(images)]
    if not inputs:
        return []
    # A tiling task per block: at least 200 of them, and at most about 100 images each, so that
    # a large archive spreads over a large cluster.
    blocks = min(len(inputs), max(200, len(inputs) // 100))
    dataset: ray.data.Dataset = ray.data.from_items(inputs, override_num_blocks=blocks)
    with _retry_settings_as_remote_args():
        dataset = dataset.flat_map(
            partial(tile_rows, tiling=config.tiling, root=str(root.folder)),
            num_cpus=TILING_TASK_CPUS,
            max_retries=TILING_TASK_RETRIES,
        )
        dataset = _embedded(dataset, checkpoint, config, plan)
    # Whole blocks as numpy columns, cut into rows here: Ray Data's `iter_rows` converts every
    # value of every row from Arrow on its own, on the driver, which shares the CPUs.
    return _rows_of(dataset.iter_batches(batch_size=None, batch_format="numpy"))


def _rows_of(batches: Iterable[dict[str, npt.NDArray[Any]]]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        names = list(batch)
        for row in range(len(batch["position"])):
            yield {name: batch[name][row] for name in names}


def _embedded(
    dataset: ray.data.Dataset, checkpoint: Path, config: PipelineConfig, plan: ActorPlan
) -> ray.data.Dataset:
    import ray

    return dataset.map_batches(
        EmbeddingActor,
        fn_constructor_kwargs={
            "checkpoint": str(checkpoint),
            "device": plan.device,
            "threads": max(1, math.ceil(plan.cpus_per_actor)),
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor,
        max_restarts=EMBEDDING_ACTOR_RESTARTS,
        max_task_retries=EMBEDDING_BATCH_RETRIES,
    )


@contextmanager
def _retry_settings_as_remote_args() -> Iterator[None]:
    """Ray 2.60 takes retry settings of Ray Data stages only as extra remote arguments, which it
    warns are deprecated (for 2.64, with no named replacement yet): silence that one warning
    here, where the settings are meant (the `ray` extra stays below 2.64 until they move)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield


def _by_image(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Consecutive rows of one image, grouped (rows come in archive order)."""
    position, group = -1, list[dict[str, Any]]()
    for row in rows:
        if row["position"] != position and group:
            yield position, group
            group = []
        position = int(row["position"])
        group.append(row)
    if group:
        yield position, group


def _take_image(
    image: ArchiveImage,
    names: tuple[str, str],
    rows: list[dict[str, Any]],
    index: ArchiveIndex | ShardedIndex,
    writer: _Writer,
    summary: IndexingSummary,
) -> None:
    summary.images += 1
    first = rows[0]
    if first["kind"] == UNREADABLE_IMAGE:
        summary.unreadable.append((str(image.path), str(first["reason"])))
        log.warning("skipping unreadable image %s: %s", image.path, first["reason"])
        return
    if first["kind"] == FINISHED:
        summary.images_finished_before += 1
        return
    twin = index.source_with_hash(str(first["file_hash"]))
    if twin is not None and twin not in names:
        summary.duplicate_files += 1
        return
    source = str(first["journal_key"])
    summary.tiles_background += int(first["background"])
    kept = [row for row in rows if row["kind"] == TILE]
    entry = FinishedSource(
        source, str(first["file_hash"]), int(first["tiles"]), int(first["background"])
    )
    writer.expect(source, entry)
    for row in kept:
        writer.queue(pickle.loads(row["item"]), np.asarray(row["descriptor"], dtype=np.float32))
    if not kept:
        writer.finish_sources()


def _progress(
    items: Iterable[tuple[int, list[dict[str, Any]]]], total: int, show: bool
) -> Iterable[tuple[int, list[dict[str, Any]]]]:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="image", desc="indexing on Ray")  # type: ignore[no-any-return]
