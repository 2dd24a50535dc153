"""Opening an index directory together with the model its codes came from, checked once.

Every program that embeds images into or against an index (`histosearch index`, `search`,
`prepare`, the service) opens it here, so each gets the same three checks before any work:

1. the index holds its model (``model.pt``): without it queries cannot be embedded;
2. that checkpoint's card agrees with the index's card on every field of
   `ModelCard.compatibility_key` (architecture, codebook geometry, input size, mean/std);
3. the model's codebooks are exactly the ones the stored codes use (`ArchiveIndex.check_model`).

`open_or_create_index` also takes the checkpoint the caller means to encode with: a new
directory is created for it, an existing one must have been built with a byte-identical copy.

Two kinds of index open alike: an image index (its model an `SPQModel`, used through
`OpenedIndex.embedder`) and a feature index, whose model reads vectors a foundation model
already produced (a `FeatureSPQModel`, card ``input_dim`` > 0, used through
`OpenedIndex.feature_encoder`). `OpenedIndex.is_feature_index` tells them apart.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from indexer.index.errors import IndexInputError
from indexer.index.pq import FloatArray
from indexer.index.protocol import Index
from indexer.index.second_stage import SecondStageSettings
from indexer.index.store import MANIFEST, ArchiveIndex, IndexDirectoryError
from model.card import ModelCard
from model.checkpoint import load_index_model, read_card
from model.embedder import Embedder
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel
from model.spq import SPQModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OpenedIndex:
    """An open index with its checked model on a device; closing it closes the index."""

    index: Index
    model: SPQModel | FeatureSPQModel
    device: torch.device

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def is_feature_index(self) -> bool:
        """Whether the index holds vectors a foundation model produced rather than images."""
        return isinstance(self.model, FeatureSPQModel)

    @property
    def feature_dim(self) -> int:
        """The length of the vectors a feature index reads (0 for an image index)."""
        return self.model.card.input_dim if isinstance(self.model, FeatureSPQModel) else 0

    def embedder(self, batch_size: int | None = None) -> Embedder:
        """An `Embedder` of this index's model (``batch_size``: images per forward pass).

        Raises `IndexKindError` on a feature index: its model reads vectors, not pixels.
        """
        if isinstance(self.model, FeatureSPQModel):
            raise IndexKindError(
                f"{self.index.directory} holds {self.model.card.input_dim}-d vectors of "
                f"{self.model.card.feature_model or 'a feature model'}, not images: query it "
                "with vectors of that model"
            )
        if batch_size is None:
            return Embedder(self.model, self.device)
        return Embedder(self.model, self.device, batch_size)

    def feature_encoder(self, batch_size: int | None = None) -> FeatureEncoder:
        """A `FeatureEncoder` of this feature index's model (``batch_size``: rows per pass).

        Raises `IndexKindError` on an image index: its model reads pixels, not vectors.
        """
        if not isinstance(self.model, FeatureSPQModel):
            raise IndexKindError(
                f"{self.index.directory} is an image index (backbone {self.model.card.backbone})"
                ": it embeds images, not precomputed feature vectors"
            )
        if batch_size is None:
            return FeatureEncoder(self.model, self.device)
        return FeatureEncoder(self.model, self.device, batch_size)

    def fine_queries(self, rows: npt.NDArray[np.floating]) -> FloatArray | None:
        """The second stage's queries of feature rows (centred, unit length, as the indexed rows
        were), or None when the index has no second stage: the compact codes alone rank."""
        if self.index.second_stage is None:
            return None
        return self.feature_encoder().centred(rows)

    def fine_query_of_item(self, item_id: int) -> FloatArray | None:
        """An item's decoded fine code as a second-stage query (None without a second stage)."""
        if self.index.second_stage is None:
            return None
        from indexer.index.shards import ShardedIndex

        index = self.index
        parts = index.shards if isinstance(index, ShardedIndex) else [index]
        for part in parts:
            if isinstance(part, ArchiveIndex) and part.get(item_id) is not None:
                return part.fine_vectors_of([item_id])
        raise IndexInputError(f"no item {item_id} in {index.directory}")

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> OpenedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexKindError(IndexDirectoryError):
    """An image index asked for a feature encoder, or a feature index for an image embedder."""


def open_index(directory: Path, device: torch.device) -> OpenedIndex:
    """Open an existing index and load its own model on ``device``, both checked.

    Raises IndexDirectoryError (no index, no ``model.pt``, codebooks that differ) or
    `model.CheckpointMismatchError` (a card that disagrees, naming each field).
    """
    index = _open_either(directory)
    try:
        model = _checked_model(index, device)
    except BaseException:
        index.close()
        raise
    return OpenedIndex(index, model, device)


def open_or_create_index(
    directory: Path,
    checkpoint: Path | None,
    device: torch.device,
    shards: int | None = None,
    second_stage: SecondStageSettings | None = None,
) -> OpenedIndex:
    """Open the index in ``directory`` to encode with ``checkpoint``, creating it if none exists.

    An existing index must have been built with the same checkpoint (same bytes); without a
    ``checkpoint`` it is opened with its own model. A new index needs a ``checkpoint``; with
    ``shards`` it is a sharded index of that many shards (`indexer.index.shards`), and an
    existing one must have that many. ``second_stage`` is chosen when an index is created: an
    existing index without it, or with another, is refused.
    """
    from indexer.index.shards import ShardedIndex, is_sharded, read_shards_manifest

    directory = Path(directory)
    sharded = is_sharded(directory)
    if not sharded and not (directory / MANIFEST).exists():
        if checkpoint is None:
            raise IndexDirectoryError(
                f"{directory} is not an index yet: give --checkpoint, the model to create it for"
            )
        log.info("creating index %s for model %s", directory, checkpoint)
        if shards is not None:
            ShardedIndex.create(directory, checkpoint, shards, second_stage).close()
        else:
            ArchiveIndex.create(directory, checkpoint, second_stage).close()
    elif shards is not None:
        held = int(read_shards_manifest(directory)["shard_count"]) if sharded else None
        if held != shards:
            raise IndexDirectoryError(
                f"{directory} holds {f'{held} shards' if held else 'an unsharded index'}, not "
                f"{shards}: index into a new directory to change that"
            )
    opened = open_index(directory, device)
    if second_stage is not None:
        _check_second_stage(opened, second_stage)
    own = opened.index.checkpoint_path
    if checkpoint is not None and own is not None and _digest(own) != _digest(checkpoint):
        opened.close()
        raise IndexDirectoryError(
            f"{directory} was built with another model than {checkpoint}"
            f"{_feature_mismatch(opened.card, read_card(checkpoint))}: its codes cannot be "
            "mixed with this model's. Index into a new directory, or delete this one to rebuild "
            "it with this model."
        )
    return opened


def _check_second_stage(opened: OpenedIndex, wanted: SecondStageSettings) -> None:
    """Refuse a second stage an existing index was not created with (its items have no codes)."""
    held = opened.index.second_stage
    if held is not None and held.kind == wanted.kind and wanted.factor == held.shortlist_factor:
        return
    if held is not None and held.kind == wanted.kind and wanted.shortlist_factor is None:
        return
    opened.close()
    have = (
        "no second stage"
        if held is None
        else f"second stage {held.kind} with a shortlist of {held.shortlist_factor} x k"
    )
    raise IndexDirectoryError(
        f"{opened.index.directory} was created with {have}, not {wanted.kind} with a shortlist "
        f"of {wanted.factor} x k: a second stage is chosen when an index is created. "
        "Index into a new directory to have it."
    )


def _feature_mismatch(index_card: ModelCard, card: ModelCard) -> str:
    """What differs in the vectors two models read, when either reads feature vectors."""
    if not (index_card.input_dim or card.input_dim):
        return ""
    if index_card.input_dim and not card.input_dim:
        return f" (the index holds {index_card.feature_model} vectors; that is an image model)"
    if card.input_dim and not index_card.input_dim:
        return f" (that model reads {card.feature_model} vectors; the index holds images)"
    if index_card.feature_model != card.feature_model:
        return (
            f" (feature_model: the index holds vectors of {index_card.feature_model!r}, that "
            f"model reads vectors of {card.feature_model!r})"
        )
    if index_card.input_dim != card.input_dim:
        return (
            f" (input_dim: the index holds {index_card.input_dim}-d vectors, that model reads "
            f"{card.input_dim}-d ones)"
        )
    return ""


def _open_either(directory: Path) -> Index:
    """An index directory, sharded or not (both are an `Index`)."""
    from indexer.index.shards import open_index_directory

    return open_index_directory(directory)


def _checked_model(index: Index, device: torch.device) -> SPQModel | FeatureSPQModel:
    checkpoint = index.checkpoint_path
    if checkpoint is None:
        raise IndexDirectoryError(
            f"{index.directory} has no model.pt: images cannot be embedded for it without the "
            "model its codes came from"
        )
    card = ModelCard.model_validate(index.card)
    model = load_index_model(checkpoint, expected_card=card, map_location=device)
    index.check_model(model.codebooks().detach().cpu().numpy())
    return model


def _digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()
