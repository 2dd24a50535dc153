"""Encoding an archive on a Ray cluster: the pipeline's stages, spread over many machines.

The same stages as `indexer.ingest.pipeline` (and its stage functions, not copies of them):

1. read, decode and tile (`read_image`, `decode_image`, `cut_tiles`): Ray Data CPU tasks, one
   image each, emitting one row per kept tile (its pixels and item record);
2. embed: a Ray Data actor pool of `indexer.index.ray_cluster.EmbeddingActor` (the model actor
   the Ray service uses too), one model per actor (a GPU each when the cluster has GPUs, a
   share of the CPUs otherwise); only descriptors and records leave the actors;
3. write: on the driver, in archive order, by the one ingest writer
   (`indexer.ingest.writer.IngestWriter`), each item into its group's shard when the index is
   sharded.

Rows reach the driver in archive order (``preserve_order``), so items get the ids and codes the
single-process run gives for the same archive. Descriptors of one tile may differ from that run's
in the last float bits (CPU kernels sum in an order that depends on the batch: measured at most
2e-7 here), which changes a code only if a sub-vector lies that close to two codewords at once.

Resuming works as in the single-process run: the driver sends each image with the file hash its
finished-source journal holds, and a task that reads the same bytes skips decoding. Tiles
already stored (an image interrupted half-way) are recognised by the writer before writing. Files
identical to a finished one are counted as duplicates; unreadable images are reported and the
run goes on.

Every node must see the archive and the checkpoint under the paths the driver uses (a shared
filesystem), as a cluster of one machine does.
"""

from __future__ import annotations

import logging
import math
import pickle
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.index.protocol import Index
from indexer.index.ray_cluster import EmbeddingActor, cluster_node_cpus, connect
from indexer.index.records import NewItem
from indexer.index.tiling import TilingConfig
from indexer.ingest.archive_root import ArchiveRoot, journal_key
from indexer.ingest.pipeline import (
    UNREADABLE,
    UNREADABLE_FILE,
    Encoder,
    Unreadable,
    cut_tiles,
    decode_image,
    read_image,
)
from indexer.ingest.sources import ArchiveImage
from indexer.ingest.writer import (
    IndexingSummary,
    IngestWriter,
    PipelineConfig,
    SeenBefore,
    progress,
    seen_before,
)

if TYPE_CHECKING:
    import ray.data


log = logging.getLogger(__name__)

# What a row of the tiling stage says about its image.
TILE, FINISHED, UNREADABLE_IMAGE, NO_TISSUE = "tile", "finished", "unreadable", "no-tissue"
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


def plan_actors(
    config: RayEncodingConfig, resources: dict[str, float], node_cpus: Sequence[float] = ()
) -> ActorPlan:
    """The embedding pool for a cluster with these total resources (`ray.cluster_resources`)
    and these CPUs on each node (`cluster_node_cpus`; one node of all the CPUs when not given).

    An actor must fit on one node: sized from the cluster's total alone, 2 actors on four 2-CPU
    nodes asked for 3.75 CPUs each, which no node holds, and encoding waited forever.
    """
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if gpus:
        return ActorPlan(config.actors or gpus, config.cpus_per_actor or 1.0, 1.0)
    nodes = list(node_cpus) or [cpus]
    actors = config.actors or max(1, int(cpus // 4))
    # Leave room for at least one tiling task, or the pipeline stalls.
    share = config.cpus_per_actor or max(
        0.25, min(8.0, (cpus - TILING_TASK_CPUS) / actors, max(nodes) - TILING_TASK_CPUS)
    )
    return ActorPlan(min(actors, _actors_that_fit(nodes, share, cpus)), share, 0.0)


def _actors_that_fit(nodes: Sequence[float], share: float, cpus: float) -> int:
    """How many actors of ``share`` CPUs the nodes hold with one tiling task's room left: an
    actor that no node can place would hold its share of every batch back forever."""
    fits = sum(int(node // share) for node in nodes)
    while fits > 1 and fits * share > cpus - TILING_TASK_CPUS:
        fits -= 1
    return max(1, fits)


# ---- stage 1-3 on the cluster: one image in, one row per tile out --------------------------------


def _journal_names(image: ArchiveImage, root: ArchiveRoot) -> tuple[str, str]:
    """The finished-source journal's names for an image: relative, and (older journals) the
    absolute path, as the single-process run looks them up."""
    return journal_key(root.name, root.source_of(image.path)), str(image.path)


def _image_row(
    position: int, image: ArchiveImage, index: Index, root: ArchiveRoot
) -> dict[str, Any]:
    finished = [index.journal.finished_source(name) for name in _journal_names(image, root)]
    return {
        "position": position,
        "image": pickle.dumps(image),
        "finished_hashes": pickle.dumps([found for found in finished if found]),
    }


def tile_rows(
    row: dict[str, Any], tiling: TilingConfig, root: str, max_pixels: int | None = None
) -> list[dict[str, Any]]:
    """Read, decode and tile one image (the pipeline's stages); a status row if none is kept.

    As in `indexer.ingest.pipeline.prepare`, only reading and decoding may fail as an unreadable
    image; anything tiling raises is a bug and fails the run. ``max_pixels``: PIL's bound on a
    decoded image in this worker process, the driver's (`histosearch index --max-image-pixels`).
    """
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    image: ArchiveImage = pickle.loads(row["image"])
    status = {"position": row["position"], "file_hash": "", "journal_key": ""}
    status |= {"tiles": 0, "background": 0, "reason": "", "pixels": b"", "item": b""}
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
    return [
        {
            **status,
            "kind": TILE,
            "pixels": pickle.dumps(tile.pixels),
            "item": pickle.dumps(tile.item),
        }
        for tile in tiled.tiles
    ]


# ---- stage 5 on the driver: the one ingest writer ---------------------------------------------


def encode_archive_on_ray(
    images: Sequence[ArchiveImage],
    index: Index,
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
    plan = plan_actors(ray_config, resources, cluster_node_cpus())
    log.info("encoding on Ray with %s", plan)
    writer = IngestWriter(index, config)
    root = ArchiveRoot.of([image.path for image in images], archive_root)
    rows = _encoded_rows(images, index, Path(checkpoint).resolve(), config, plan, root)
    by_image = progress(_by_image(rows), len(images), config.progress, "indexing on Ray", "image")
    for position, image_rows in by_image:
        names = _journal_names(images[position], root)
        _take_image(images[position], names, image_rows, writer)
    return writer.close()


class _RayEncoder:
    """An `Encoder` whose model runs in the cluster's embedding actors: each batch is split over
    the actors, embedded side by side, and put back in order."""

    def __init__(self, checkpoint: Path, config: RayEncodingConfig) -> None:
        import ray
        from ray.util import ActorPool

        connect(config.address)
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        plan = plan_actors(config, resources, cluster_node_cpus())
        log.info("embedding on Ray with %s", plan)
        actor = ray.remote(num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor)(
            EmbeddingActor
        )
        threads = max(1, math.ceil(plan.cpus_per_actor))
        self._actors = plan.actors
        self._pool = ActorPool(
            [actor.remote(str(checkpoint), plan.device, threads) for _ in range(plan.actors)]
        )

    def __call__(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        share = max(1, math.ceil(len(images) / self._actors))
        parts = [list(images[start : start + share]) for start in range(0, len(images), share)]
        embedded = self._pool.map(lambda actor, part: actor.embed.remote(part), parts)
        return np.concatenate(list(embedded)).astype(np.float32, copy=False)


def ray_encoder(checkpoint: Path, config: RayEncodingConfig | None = None) -> Encoder:
    """An `Encoder` (as `indexer.ingest.pipeline` and `indexer.ingest.slides` take one) that
    embeds on a Ray cluster, in `EmbeddingActor`s, the actors the Ray service uses too."""
    return _RayEncoder(Path(checkpoint).resolve(), config or RayEncodingConfig())


def _encoded_rows(
    images: Sequence[ArchiveImage],
    index: Index,
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
            partial(
                tile_rows,
                tiling=config.tiling,
                root=str(root.folder),
                max_pixels=Image.MAX_IMAGE_PIXELS,
            ),
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
    image: ArchiveImage, names: tuple[str, str], rows: list[dict[str, Any]], writer: IngestWriter
) -> None:
    writer.summary.images += 1
    first = rows[0]
    if first["kind"] == UNREADABLE_IMAGE:
        writer.unreadable(str(image.path), str(first["reason"]))
        return
    file_hash = str(first["file_hash"])
    # A task that read bytes its image was finished with said so; duplicates are asked here.
    if first["kind"] == FINISHED:
        seen: SeenBefore | None = SeenBefore(None)
    else:
        seen = seen_before(writer.index.journal, names, file_hash)
    if seen is not None:
        writer.skipped(names[0], seen)
        return
    kept = [row for row in rows if row["kind"] == TILE]
    items: list[NewItem] = [pickle.loads(row["item"]) for row in kept]
    hashes = [item.content_hash for item in items]
    fresh = writer.begin(str(first["journal_key"]), file_hash, hashes, int(first["background"]))
    new = [number for number, is_new in enumerate(fresh) if is_new]
    if new:
        vectors = np.stack([np.asarray(kept[n]["descriptor"], dtype=np.float32) for n in new])
        writer.write([items[n] for n in new], vectors)
