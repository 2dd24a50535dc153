"""Backbone weight files as publishers ship them: read, unwrapped, fingerprinted, fitted strictly.

Accepted files: ``.safetensors`` (read without unpickling), and ``.bin`` / ``.pth`` / ``.pt`` /
``.torch`` state dicts read by ``torch.load(weights_only=True)``, which never runs pickled code.
Training frameworks wrap the tensors (``{"state_dict": ...}``, ``{"model": ...}``) or prefix them
(``module.`` from DistributedDataParallel): both are undone here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.errors import HistosearchError

WRAPPER_KEYS = ("state_dict", "model")
# Shown in an error: enough to recognise the layout, few enough to read.
KEYS_SHOWN = 8


class BackboneWeightsError(HistosearchError, ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the architecture."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped and without a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, a pickle with code, a foreign format
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from None
    return _unwrapped(loaded, path)


def _unwrapped(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        wrapper = next((key for key in WRAPPER_KEYS if key in loaded), None)
        if wrapper is None:
            keys = sorted(map(str, loaded))[:KEYS_SHOWN]
            raise BackboneWeightsError(f"{path} holds no state dict: top-level keys {keys}")
        loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not loaded:
        raise BackboneWeightsError(f"{path} holds no tensors")
    state = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _is_state_dict(mapping: Mapping[Any, Any]) -> bool:
    return bool(mapping) and all(isinstance(value, torch.Tensor) for value in mapping.values())


def load_strictly(
    module: nn.Module, state: Mapping[str, torch.Tensor], description: str, ignored: set[str]
) -> None:
    """Load ``state`` into ``module``; refuse, naming the keys, unless every tensor fits.

    ``ignored``: keys left out on both sides on purpose (a classifier head the trunk does not
    have, a stem that is replaced after loading).
    """
    state = {key: value for key, value in state.items() if key not in ignored}
    expected = {key: value for key, value in module.state_dict().items() if key not in ignored}
    missing = _top_level_first(set(expected) - set(state))
    unexpected = _top_level_first(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in _top_level_first(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        raise BackboneWeightsError(
            f"{description} does not fit the architecture: "
            f"missing keys {_shown(missing)}, unexpected keys {_shown(unexpected)}, "
            f"wrong shapes {_shown(wrong_shape)}"
        )
    # Everything but the ignored keys was checked above, so the non-strict load skips only those.
    module.load_state_dict(dict(state), strict=False)


def _top_level_first(keys: set[str]) -> list[str]:
    """Keys sorted so that top-level ones (``reg_token``, ``pos_embed``) come before the
    per-block ones: they tell the architectures apart at a glance."""
    return sorted(keys, key=lambda key: (key.count("."), key))


def _shown(keys: list[str]) -> str:
    if len(keys) <= KEYS_SHOWN:
        return str(keys)
    return f"{keys[:KEYS_SHOWN]} and {len(keys) - KEYS_SHOWN} more"
