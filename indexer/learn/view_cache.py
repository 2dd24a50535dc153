"""Backbone outputs of augmented views, computed once, for training a head on a frozen backbone.

With a frozen backbone nothing upstream of the head learns, yet every training step pays a
backbone forward for both views. The cache encodes V augmented views of every training image
once and keeps the trunk's raw output (every stage's feature map, or a token model's class token
and patch grid): the cut point is before pooling, because GeM's p and attention pooling learn, so
the head, projection and codebooks train on exactly what they would see in normal training.

Layout of a cache folder ``<root>/<key>/``: ``views.npy`` (N, V, F) float16, each row the
flattened trunk output of one view; ``layout.json`` the shapes the rows unflatten to;
``progress.json`` how many chunks of images are finished. Chunks are written in order and each
is seeded by its number, so a killed build resumes after its last finished chunk and gives the
same file an uninterrupted build gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model import SPQModel, normalize
from model.atomic import atomic_write_bytes
from model.augment import AugmentationConfig
from model.errors import HistosearchError
from model.timm_backbones import TokenFeatures

logger = logging.getLogger(__name__)

VIEWS_FILE = "views.npy"
LAYOUT_FILE = "layout.json"
PROGRESS_FILE = "progress.json"
CHUNK_IMAGES = 64

BackboneOutput = list[torch.Tensor] | TokenFeatures


class ViewCacheError(HistosearchError, ValueError):
    """A view cache that does not match the run that reads it."""


def view_cache_key(
    model: SPQModel, dataset_fingerprint: str, augmentation: AugmentationConfig, views: int
) -> str:
    """Same backbone, weights, data, input size, augmentation and V: same key, same cache."""
    card = model.card
    recipe = {
        "backbone": card.backbone,
        "stages": card.stages,
        "small_input_stem": card.small_input_stem,
        "weights_sha256": card.backbone_weights_sha256 or "random",
        # Random weights are only reproducible through the seed that drew them; a key from the
        # weights themselves covers both cases.
        "trunk_sha256": trunk_digest(model.trunk),
        "data": dataset_fingerprint,
        "input_size": card.input_size,
        "augmentation": augmentation.model_dump(mode="json"),
        "views": views,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def trunk_digest(trunk: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class OutputLayout:
    """How a flat row unflattens into the trunk's output of one view."""

    token_model: bool
    has_class_token: bool
    shapes: list[list[int]]  # per part, without the batch dimension

    @property
    def width(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    @staticmethod
    def of(output: BackboneOutput) -> OutputLayout:
        parts = _parts(output)
        return OutputLayout(
            token_model=isinstance(output, TokenFeatures),
            has_class_token=isinstance(output, TokenFeatures) and output.class_token is not None,
            shapes=[list(part.shape[1:]) for part in parts],
        )

    def unflatten(self, rows: torch.Tensor) -> BackboneOutput:
        """(N, F) rows -> the trunk output of N views."""
        sizes = [math.prod(shape) for shape in self.shapes]
        parts = [
            piece.reshape(rows.shape[0], *shape)
            for piece, shape in zip(torch.split(rows, sizes, dim=1), self.shapes, strict=True)
        ]
        if not self.token_model:
            return parts
        if self.has_class_token:
            return TokenFeatures(parts[0], parts[1])
        return TokenFeatures(None, parts[0])


def _parts(output: BackboneOutput) -> list[torch.Tensor]:
    if isinstance(output, TokenFeatures):
        head = [] if output.class_token is None else [output.class_token]
        return [*head, output.patch_grid]
    return list(output)


def flatten_backbone_output(output: BackboneOutput) -> torch.Tensor:
    """The trunk output of N views -> (N, F) rows, as `OutputLayout.unflatten` reads them."""
    return torch.cat([part.flatten(1) for part in _parts(output)], dim=1)


@dataclass
class CacheCost:
    """What the cache cost to build: images x views x forward seconds."""

    images: int
    views: int
    forward_s: float
    reused: bool
    folder: str


class ViewCache:
    """A finished cache: N images x V views of trunk output, read by index."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        self.layout = OutputLayout(**layout["layout"])
        self.cost = CacheCost(**layout["cost"])
        self.rows = np.load(folder / VIEWS_FILE, mmap_mode="r")

    @property
    def images(self) -> int:
        return int(self.rows.shape[0])

    @property
    def views(self) -> int:
        return int(self.rows.shape[1])

    def backbone_output(
        self, images: torch.Tensor, views: torch.Tensor, device: torch.device
    ) -> BackboneOutput:
        """The cached trunk output of view ``views[i]`` of image ``images[i]``, in float32."""
        rows = self.rows[images.numpy(), views.numpy()]
        return self.layout.unflatten(torch.from_numpy(rows).to(device).float())


def build_view_cache(
    model: SPQModel,
    images: torch.Tensor,
    augment: nn.Module,
    views: int,
    folder: Path,
    *,
    seed: int,
    device: torch.device,
    compute_dtype: torch.dtype = torch.float32,
    chunk_images: int = CHUNK_IMAGES,
) -> ViewCache:
    """Encode ``views`` augmented views of every image (N, 3, H, W) uint8 through the frozen
    trunk into ``folder``, resuming after its last finished chunk; reuse a finished cache."""
    if (folder / LAYOUT_FILE).exists():
        cache = ViewCache(folder)
        if cache.images != images.shape[0] or cache.views != views:
            raise ViewCacheError(
                f"view cache {folder} holds {cache.images} images x {cache.views} views, the "
                f"run needs {images.shape[0]} x {views}"
            )
        cache.cost.reused = True
        logger.info(
            "view cache: reused %s (%d images x %d views, built in %.1f s of backbone forwards)",
            folder,
            cache.images,
            cache.views,
            cache.cost.forward_s,
        )
        return cache
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    count = images.shape[0]
    chunks = range(0, count, chunk_images)
    progress = _read_progress(folder)
    rows: np.memmap | None = None
    layout: OutputLayout | None = None
    if progress["chunks_done"] > 0:
        rows = np.load(folder / VIEWS_FILE, mmap_mode="r+")
        layout = OutputLayout(**progress["layout"])
        logger.info(
            "view cache: resuming %s after %d of %d chunks",
            folder,
            progress["chunks_done"],
            len(chunks),
        )
    forward_s = float(progress["forward_s"])
    was_training = model.training
    model.eval()
    with tqdm(total=len(chunks), initial=progress["chunks_done"], unit="chunk") as bar:
        for number, start in enumerate(chunks):
            if number < progress["chunks_done"]:
                continue
            # Seeded by chunk number: a resumed build draws the augmentations an uninterrupted
            # one draws.
            torch.manual_seed(seed * 1_000_003 + number)
            batch = images[start : start + chunk_images].to(device).float().div_(255)
            started = time.perf_counter()
            encoded = [_encode_views(model, augment, batch, compute_dtype) for _ in range(views)]
            forward_s += time.perf_counter() - started
            if rows is None or layout is None:
                layout = OutputLayout.of(encoded[0][1])
                rows = np.lib.format.open_memmap(
                    folder / VIEWS_FILE,
                    mode="w+",
                    dtype=np.float16,
                    shape=(count, views, layout.width),
                )
            stacked = torch.stack([flat for flat, _ in encoded], dim=1)
            rows[start : start + batch.shape[0]] = stacked.cpu().numpy().astype(np.float16)
            rows.flush()
            progress = {"chunks_done": number + 1, "forward_s": forward_s, "layout": asdict(layout)}
            atomic_write_bytes(folder / PROGRESS_FILE, json.dumps(progress).encode())
            bar.update(1)
    model.train(was_training)
    assert layout is not None
    cost = CacheCost(count, views, forward_s, reused=False, folder=str(folder))
    logger.info(
        "view cache: built %s, %d images x %d views in %.1f s of backbone forwards",
        folder,
        count,
        views,
        forward_s,
    )
    record = {"layout": asdict(layout), "cost": asdict(cost)}
    atomic_write_bytes(folder / LAYOUT_FILE, json.dumps(record, indent=2).encode())
    return ViewCache(folder)


def _encode_views(
    model: SPQModel, augment: nn.Module, batch: torch.Tensor, compute_dtype: torch.dtype
) -> tuple[torch.Tensor, BackboneOutput]:
    mixed = compute_dtype != torch.float32
    device_type = batch.device.type
    with torch.no_grad(), torch.autocast(device_type, dtype=compute_dtype, enabled=mixed):
        output: BackboneOutput = model.trunk(normalize(augment(batch), model.card))
    return flatten_backbone_output(output).float(), output


def _read_progress(folder: Path) -> dict[str, Any]:
    path = folder / PROGRESS_FILE
    if path.exists() and (folder / VIEWS_FILE).exists():
        progress: dict[str, Any] = json.loads(path.read_text())
        return progress
    return {"chunks_done": 0, "forward_s": 0.0, "layout": None}


def distinct_view_pairs(count: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different view numbers in [0, views) for each of ``count`` images."""
    first = torch.randint(views, (count,))
    second = (first + torch.randint(1, views, (count,))) % views
    return first, second
