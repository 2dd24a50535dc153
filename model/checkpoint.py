"""Checkpoints that carry their model card, written atomically and checked on load.

A checkpoint holds tensors and plain data only (the card as JSON-ready data, numbers, strings,
lists, dicts), and is read with ``torch.load(weights_only=True)``: checkpoints travel inside index
directories, and unpickling anything else from a file could run code. Every checkpoint
histosearch has written has had this form, so older ones load unchanged.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.atomic import atomic_write
from model.card import ModelCard
from model.errors import HistosearchError
from model.spq import SPQModel, count_parameters

if TYPE_CHECKING:
    from model.feature_spq import FeatureSPQModel

CHECKPOINT_FORMAT = 1
_PLAIN_LEAVES = (torch.Tensor, str, int, float, bool, type(None))


class CheckpointMismatchError(HistosearchError, ValueError):
    """A checkpoint whose card disagrees with what was expected or with its own weights."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """A file that holds pickled Python objects beyond tensors and plain data: refused unread."""


def _check_plain(value: object, where: str = "checkpoint") -> None:
    """Refuse to write what ``weights_only`` loading would refuse to read."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _check_plain(item, f"{where}[{position}]")
    elif not isinstance(value, _PLAIN_LEAVES):
        raise TypeError(
            f"{where} is a {type(value).__name__}: checkpoints hold tensors and plain data only"
        )


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """`torch.save` through the project's atomic write: never half a file. Only tensors and plain
    data are accepted, so that the file reads back with ``weights_only=True``."""
    _check_plain(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def save_checkpoint(
    model: SPQModel | torch.nn.Module, path: Path, extra: dict[str, Any] | None = None
) -> None:
    """Save the weights with the card (as JSON-ready data) and any ``extra`` training state.

    ``model``: an image `SPQModel` or a feature model (`model.feature_spq`), each with its card."""
    card = model.card
    if not isinstance(card, ModelCard):
        raise TypeError(f"{type(model).__name__} has no model card to save")
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "card": card.model_dump(mode="json"),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = extra
    atomic_torch_save(payload, path)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload, read without unpickling anything but tensors and plain data."""
    try:
        payload: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message names the offending global ("... unsupported GLOBAL posix.system ...").
        named = [line for line in str(error).splitlines() if "GLOBAL" in line]
        reason = named[0].strip() if named else "not tensors and plain data"
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects besides tensors and plain data and is refused, "
            f"since loading it could run code ({reason}); histosearch checkpoints hold tensors "
            "and plain data only"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointMismatchError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(payload, dict) or "card" not in payload or "state_dict" not in payload:
        raise CheckpointMismatchError(f"{path} is not a histosearch checkpoint (no model card)")
    return payload


def read_card(path: Path) -> ModelCard:
    return ModelCard.model_validate(read_checkpoint(path)["card"])


def _disagreements(expected: ModelCard, found: ModelCard) -> list[str]:
    want, have = expected.compatibility_key(), found.compatibility_key()
    return [
        f"{key}: expected {want[key]!r}, checkpoint has {have[key]!r}"
        for key in want
        if want[key] != have[key]
    ]


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights strictly; weights that do not fit the architecture the card
    names are a `CheckpointMismatchError` naming ``path``."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointMismatchError(
            f"{path}: weights do not fit the card's architecture: {error}"
        ) from None


def load_checkpoint(
    path: Path,
    expected_card: ModelCard | None = None,
    map_location: str | torch.device = "cpu",
) -> SPQModel:
    """Rebuild the model from its card and weights, in eval mode.

    Raises CheckpointMismatchError if the card disagrees with ``expected_card`` (on the fields of
    ``ModelCard.compatibility_key``) or if the weights do not fit the architecture the card names.
    """
    payload = read_checkpoint(Path(path), map_location)
    card = ModelCard.model_validate(payload["card"])
    if expected_card is not None:
        problems = _disagreements(expected_card, card)
        if problems:
            raise CheckpointMismatchError(f"{path}: model card mismatch; " + "; ".join(problems))
    model = SPQModel(card)
    load_weights(model, payload["state_dict"], path)
    actual_parameters = count_parameters(model)
    if card.parameter_count and card.parameter_count != actual_parameters:
        raise CheckpointMismatchError(
            f"{path}: card says {card.parameter_count} parameters, weights have {actual_parameters}"
        )
    return model.to(map_location).eval()


def load_index_model(
    path: Path,
    expected_card: ModelCard | None = None,
    map_location: str | torch.device = "cpu",
) -> SPQModel | FeatureSPQModel:
    """The model an index's codes come from, whichever kind the card names: a feature model
    (`model.feature_spq.FeatureSPQModel`, card ``input_dim`` > 0) or an image model.

    The card is checked against ``expected_card`` as `load_checkpoint` checks it, so a feature
    model made from another foundation model (``feature_model``) or for vectors of another
    length (``input_dim``) is refused naming that field.
    """
    card = read_card(Path(path))
    if card.input_dim <= 0:
        return load_checkpoint(path, expected_card, map_location)
    if expected_card is not None:
        problems = _disagreements(expected_card, card)
        if problems:
            raise CheckpointMismatchError(f"{path}: model card mismatch; " + "; ".join(problems))
    from model.feature_spq import load_feature_checkpoint

    return load_feature_checkpoint(Path(path), str(map_location))
