"""The Ray pieces shared by encoding on a cluster (`indexer.ingest.distributed`) and serving on
one (`service.ray_serve`): joining a cluster, and the actor that holds the model.

Here, in the index library, because both sides may import it (the dependency rule: the service
imports only `model` and `indexer.index`). Ray itself is imported inside the functions, so that
nothing of it loads unless asked for (the `ray` extra is optional).
"""

from __future__ import annotations

import logging
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.errors import HistosearchError

__all__ = ["CONNECT_TIMEOUT_S", "EmbeddingActor", "RayClusterError", "cluster_node_cpus", "connect"]

# Seconds to wait for a named cluster's port to answer before giving up on it.
CONNECT_TIMEOUT_S = 5.0


class RayClusterError(HistosearchError):
    """The Ray cluster named could not be reached or cannot run the work."""


def connect(address: str) -> None:
    """Join the cluster at ``address``, or for ``auto`` the one in RAY_ADDRESS or running on this
    machine (else a new local one); fail fast on an unreachable one."""
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


def cluster_node_cpus() -> list[float]:
    """The CPUs of each live node of the connected cluster: what one actor or replica can hold
    at most (the cluster's total is spread over nodes that may each be small)."""
    import ray

    return [
        float(node["Resources"].get("CPU", 0.0))
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node.get("Alive")
    ]


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


class EmbeddingActor:
    """One model on one device, in a Ray actor: a Ray Serve replica calls `embed`, a Ray Data
    actor pool calls the instance on batches of rows.

    ``threads``: torch's CPU threads in this process (default: torch's own choice).
    """

    def __init__(self, checkpoint: str, device: str, threads: int | None = None) -> None:
        import torch

        from model import Embedder, load_checkpoint

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        target = torch.device(device)
        self._embedder = Embedder(load_checkpoint(Path(checkpoint), map_location=target), target)

    def embed(self, images: list[Image.Image]) -> npt.NDArray[np.float32]:
        """(N, D) descriptors of the images."""
        return self._embedder.embed(images)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """A Ray Data batch with a ``pixels`` column (a pickled RGB image, or empty bytes for a
        row with nothing to embed): the same columns without ``pixels``, plus ``descriptor``
        (zeros for the empty rows). Only descriptors leave the actor, never pixels."""
        payloads = list(batch["pixels"])
        kept = np.array([len(payload) > 0 for payload in payloads], dtype=bool)
        descriptors = np.zeros((len(payloads), self._embedder.dim), dtype=np.float32)
        if kept.any():
            images = [pickle.loads(payload) for payload in payloads if len(payload) > 0]
            descriptors[kept] = self._embedder.embed(images)
        out = {key: value for key, value in batch.items() if key != "pixels"}
        return {**out, "descriptor": descriptors}
