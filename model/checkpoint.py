"""Checkpoints that carry their model card, written atomically and checked on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.atomic import atomic_write
from model.card import ModelCard
from model.spq import SPQModel, count_parameters

CHECKPOINT_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint whose card disagrees with what was expected or with its own weights."""


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """`torch.save` through the project's atomic write: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def save_checkpoint(model: SPQModel, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Save the weights with the card (as JSON-ready data) and any ``extra`` training state."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "card": model.card.model_dump(mode="json"),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = extra
    atomic_torch_save(payload, path)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    payload: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=False)
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
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise CheckpointMismatchError(
            f"{path}: weights do not fit the card's architecture: {error}"
        ) from None
    actual_parameters = count_parameters(model)
    if card.parameter_count and card.parameter_count != actual_parameters:
        raise CheckpointMismatchError(
            f"{path}: card says {card.parameter_count} parameters, weights have {actual_parameters}"
        )
    return model.to(map_location).eval()
