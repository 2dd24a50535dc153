"""Query vectors given as JSON or .npy: accepted as float32 rows, or refused saying which rule."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from indexer.index.errors import IndexInputError
from indexer.index.query_vectors import (
    QueryVectorError,
    check_query_vectors,
    vector_from_json,
    vectors_from_npy,
)

DIM = 4


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_a_json_array_of_the_index_dimension_becomes_one_float32_row() -> None:
    rows = vector_from_json("[1, 2.5, -3, 0]", DIM)
    assert rows.dtype == np.float32
    assert rows.shape == (1, DIM)
    assert rows.tolist() == [[1.0, 2.5, -3.0, 0.0]]


def test_a_json_vector_of_the_wrong_length_says_what_it_got_and_what_the_index_expects() -> None:
    with pytest.raises(QueryVectorError, match="got 3, the index expects 4") as caught:
        vector_from_json("[1, 2, 3]", DIM)
    assert caught.value.reason == "length"


def test_nan_and_infinity_in_json_are_refused_with_their_positions() -> None:
    with pytest.raises(QueryVectorError, match="positions 1, 3") as caught:
        vector_from_json("[0, NaN, 1, Infinity]", DIM)
    assert caught.value.reason == "non_finite"


def test_a_json_number_beyond_the_float32_range_is_refused_as_infinite() -> None:
    with pytest.raises(QueryVectorError, match="float32 range") as caught:
        vector_from_json(json.dumps([0, 1e39, 0, 0]), DIM)
    assert caught.value.reason == "non_finite"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [('[1, "2", 3, 4]', "string"), ("[1, true, 3, 4]", "boolean"), ("[1, null, 3, 4]", "null")],
)
def test_json_entries_that_are_not_numbers_are_refused_by_position_and_type(
    payload: str, kind: str
) -> None:
    with pytest.raises(QueryVectorError, match=f"position 1 is {kind}") as caught:
        vector_from_json(payload, DIM)
    assert caught.value.reason == "dtype"


@pytest.mark.parametrize("payload", ["[[1, 2, 3, 4]]", '{"v": [1, 2, 3, 4]}', "3"])
def test_json_that_is_not_a_flat_array_of_numbers_is_refused(payload: str) -> None:
    with pytest.raises(QueryVectorError) as caught:
        vector_from_json(payload, DIM)
    assert caught.value.reason in {"shape", "dtype"}


def test_text_that_is_not_json_is_refused_as_a_format_error() -> None:
    with pytest.raises(QueryVectorError, match="not valid JSON") as caught:
        vector_from_json("1, 2, 3, 4", DIM)
    assert caught.value.reason == "format"


def test_an_npy_matrix_gives_one_float32_row_per_query() -> None:
    matrix = np.arange(12, dtype=np.float16).reshape(3, DIM)
    rows = vectors_from_npy(npy_bytes(matrix), DIM)
    assert rows.dtype == np.float32
    assert rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, matrix.astype(np.float32))


def test_a_one_dimensional_npy_is_one_query() -> None:
    rows = vectors_from_npy(npy_bytes(np.ones(DIM, dtype=np.float64)), DIM)
    assert rows.shape == (1, DIM)


def test_npy_rows_of_another_dimension_are_refused_with_both_lengths() -> None:
    with pytest.raises(QueryVectorError, match="got 5, the index expects 4"):
        vectors_from_npy(npy_bytes(np.zeros((2, 5), dtype=np.float32)), DIM)


def test_npy_nan_is_refused_naming_row_and_position() -> None:
    matrix = np.zeros((3, DIM), dtype=np.float32)
    matrix[2, 1] = np.nan
    with pytest.raises(QueryVectorError, match="row:position 2:1"):
        vectors_from_npy(npy_bytes(matrix), DIM)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((1, DIM), dtype=np.complex64),
        np.zeros((1, DIM), dtype=bool),
        np.array([["a", "b", "c", "d"]]),
    ],
)
def test_npy_arrays_of_non_real_dtypes_are_refused_naming_the_dtype(array: np.ndarray) -> None:
    with pytest.raises(QueryVectorError, match=f"dtype {array.dtype}") as caught:
        vectors_from_npy(npy_bytes(array), DIM)
    assert caught.value.reason == "dtype"


def test_an_npy_of_python_objects_is_refused_without_unpickling_it() -> None:
    objects = np.array([[1.0, 2.0, 3.0, object()]], dtype=object)
    with pytest.raises(QueryVectorError, match="Python objects") as caught:
        vectors_from_npy(npy_bytes(objects, allow_pickle=True), DIM)
    assert caught.value.reason == "dtype"


def test_an_npy_of_three_dimensions_is_refused_as_a_shape_error() -> None:
    with pytest.raises(QueryVectorError, match=r"shape \(2, 2, 4\)") as caught:
        vectors_from_npy(npy_bytes(np.zeros((2, 2, DIM), dtype=np.float32)), DIM)
    assert caught.value.reason == "shape"


def test_bytes_that_are_not_npy_are_refused_as_a_format_error() -> None:
    with pytest.raises(QueryVectorError, match=r"not a readable \.npy") as caught:
        vectors_from_npy(b"[1, 2, 3, 4]", DIM)
    assert caught.value.reason == "format"


def test_more_rows_than_allowed_are_refused() -> None:
    with pytest.raises(QueryVectorError, match="3 query rows, at most 2") as caught:
        vectors_from_npy(npy_bytes(np.zeros((3, DIM), dtype=np.float32)), DIM, max_rows=2)
    assert caught.value.reason == "too_many"


def test_an_empty_matrix_is_refused() -> None:
    with pytest.raises(QueryVectorError, match="0 rows"):
        check_query_vectors(np.zeros((0, DIM), dtype=np.float32), DIM)


def test_query_vector_errors_are_the_index_input_errors_callers_already_answer_with_4xx() -> None:
    with pytest.raises(IndexInputError):
        vector_from_json("[1]", DIM)
    with pytest.raises(ValueError):
        vector_from_json("[1]", DIM)
