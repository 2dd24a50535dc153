"""Query vectors given by a client: one JSON array, or an ``.npy`` of one or more rows.

Search by vector takes embeddings a foundation model produced elsewhere; before they reach the
index they are checked here, and a vector that does not fit is refused with a `QueryVectorError`
saying which rule it broke (``reason``) and where: the wrong length (got X, the index expects D),
NaN or Inf (at which positions), a dtype that is not a real number, a shape that is not one row
or a matrix of rows, or bytes that are not JSON / ``.npy`` at all.
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from indexer.index.errors import IndexInputError

Reason = Literal["format", "dtype", "shape", "length", "non_finite", "too_many"]
_REAL_KINDS = frozenset("fiu")
_SHOWN = 10
_NPY_MAGIC = b"\x93NUMPY"


class QueryVectorError(IndexInputError):
    """A query vector that does not fit the index; ``reason`` names the broken rule."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def vector_from_json(text: str | bytes, dim: int) -> npt.NDArray[np.float32]:
    """One vector given as a flat JSON array of ``dim`` numbers, as a (1, dim) float32 row."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise QueryVectorError("format", f"the vector is not valid JSON ({error})") from error
    if not isinstance(value, list):
        raise QueryVectorError(
            "shape", f"the vector must be a JSON array of numbers, got a {_json_type(value)}"
        )
    wrong = [i for i, entry in enumerate(value) if not _is_json_number(entry)]
    if wrong:
        kinds = sorted({_json_type(value[i]) for i in wrong})
        raise QueryVectorError(
            "dtype",
            f"the vector must hold numbers only; {_positions(wrong)} "
            f"{'is' if len(wrong) == 1 else 'are'} {', '.join(kinds)}",
        )
    try:
        array = np.asarray(value, dtype=np.float64).reshape(1, -1)
    except OverflowError as error:
        raise QueryVectorError("non_finite", "a number beyond the float range") from error
    return check_query_vectors(array, dim)


def vectors_from_npy(data: bytes, dim: int, max_rows: int | None = None) -> npt.NDArray[np.float32]:
    """The rows of an ``.npy`` payload (one vector, or a matrix of rows) as (Q, dim) float32.

    Object, string, boolean and complex arrays are refused without being unpickled.
    """
    if not data.startswith(_NPY_MAGIC):
        raise QueryVectorError("format", "not a readable .npy file (no .npy header)")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        if "Object arrays" in str(error):
            raise QueryVectorError(
                "dtype", "the .npy holds Python objects; send real numbers (float32)"
            ) from error
        raise QueryVectorError("format", f"not a readable .npy file ({error})") from error
    except (OSError, EOFError) as error:
        raise QueryVectorError("format", f"not a readable .npy file ({error})") from error
    if array.ndim == 1:
        array = array.reshape(1, -1)
    rows = check_query_vectors(array, dim)
    if max_rows is not None and len(rows) > max_rows:
        raise QueryVectorError("too_many", f"{len(rows)} query rows, at most {max_rows} allowed")
    return rows


def check_query_vectors(array: npt.NDArray[Any], dim: int) -> npt.NDArray[np.float32]:
    """``array`` (Q, dim) of real numbers, all finite in float32, as C-contiguous float32."""
    if array.dtype.kind not in _REAL_KINDS:
        raise QueryVectorError(
            "dtype", f"dtype {array.dtype} is not a real number type (send float32)"
        )
    if array.ndim != 2:
        raise QueryVectorError(
            "shape", f"query vectors of shape {array.shape}: expected one vector or rows x {dim}"
        )
    if array.shape[0] == 0:
        raise QueryVectorError("shape", "no query vectors (0 rows)")
    if array.shape[1] != dim:
        raise QueryVectorError(
            "length", f"wrong length: got {array.shape[1]}, the index expects {dim}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        vectors = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(vectors)
    if not finite.all():
        raise QueryVectorError("non_finite", _non_finite_message(array, finite))
    return vectors


def _non_finite_message(array: npt.NDArray[Any], finite: npt.NDArray[np.bool_]) -> str:
    rows, columns = np.nonzero(~finite)
    if array.shape[0] == 1:
        where = f"at {_positions(columns.tolist())}"
    else:
        pairs = [f"{r}:{c}" for r, c in zip(rows.tolist(), columns.tolist(), strict=True)]
        more = f" and {len(pairs) - _SHOWN} more" if len(pairs) > _SHOWN else ""
        where = f"at row:position {', '.join(pairs[:_SHOWN])}{more}"
    overflow = bool(np.isfinite(array[~finite]).any())
    note = " (values beyond the float32 range count as Inf)" if overflow else ""
    return f"NaN or Inf {where}{note}"


def _positions(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_SHOWN]))
    more = f" and {len(indices) - _SHOWN} more" if len(indices) > _SHOWN else ""
    return f"position{'s' if len(indices) > 1 else ''} {shown}{more}"


def _is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), "number")
