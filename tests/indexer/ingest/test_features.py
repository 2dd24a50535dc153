"""Feature archives read from small real files: HDF5 (h5py), .pt (torch.save) and .npy + CSV."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from indexer.index.metadata import FinishedSource
from indexer.index.store import ArchiveIndex
from indexer.ingest.features import (
    FeatureArchive,
    FeatureBatch,
    FeatureColumns,
    FeatureFileError,
    FeatureOptions,
    RefusedFile,
    detect_layout,
)
from indexer.ingest.sources import SourceError
from tests.indexer.index_helpers import DIM, SHARED_DATA, new_index

D = 8


def features(rows: int, seed: int, dim: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def write_h5(
    path: Path, matrix: np.ndarray, coords: np.ndarray | None = None, **attrs: int
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=matrix)
        if coords is not None:
            dataset = handle.create_dataset("coords", data=coords)
            for name, value in attrs.items():
                dataset.attrs[name] = value


def write_pt(path: Path, matrix: np.ndarray | torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.as_tensor(matrix), path)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_all(
    archive: FeatureArchive, finished: Callable[[str], str | None] | None = None
) -> tuple[list[FeatureBatch], list[RefusedFile]]:
    batches: list[FeatureBatch] = []
    refused: list[RefusedFile] = []
    for outcome in archive.batches(finished):
        if isinstance(outcome, FeatureBatch):
            batches.append(outcome)
        else:
            refused.append(outcome)
    return batches, refused


def test_h5_files_with_coords_give_rows_with_their_patch_in_level0_pixels(tmp_path: Path) -> None:
    matrix = features(3, seed=0)
    coords = np.array([[0, 0], [512, 0], [512, 1024]])
    write_h5(tmp_path / "h5_files" / "slide-a.h5", matrix, coords, patch_size=256, downsample=2)

    archive = FeatureArchive.open(tmp_path / "h5_files")
    (batch,), refused = read_all(archive)

    assert archive.layout == "h5"
    assert refused == []
    np.testing.assert_array_equal(batch.vectors, matrix)
    assert batch.vectors.dtype == np.float32
    assert batch.last
    third = batch.rows.items()[2]
    assert third.source == "slide-a.h5"
    assert third.archive == "h5_files"
    assert third.group == "slide-a"
    assert third.tile == (512, 1024, 512, 512)
    assert third.extra == {"slide_id": "slide-a", "row": 2, "x": 512, "y": 1024, "patch_size": 256}
    assert third.content_hash == "features:h5_files/slide-a.h5#2"


def test_h5_files_without_coords_give_rows_without_a_place(tmp_path: Path) -> None:
    matrix = features(4, seed=1).astype(np.float16)
    write_h5(tmp_path / "slide-b.h5", matrix)

    (batch,), _ = read_all(FeatureArchive.open(tmp_path))

    np.testing.assert_array_equal(batch.vectors, matrix.astype(np.float32))
    assert [item.tile for item in batch.rows.items()] == [None] * 4
    assert batch.rows.items()[3].extra == {"slide_id": "slide-b", "row": 3}


def test_coords_without_a_known_level0_size_are_kept_as_metadata_only(tmp_path: Path) -> None:
    write_h5(tmp_path / "s.h5", features(2, seed=2), np.array([[1, 2], [3, 4]]), patch_size=224)

    (batch,), _ = read_all(FeatureArchive.open(tmp_path))

    assert batch.rows.items()[1].tile is None
    assert (batch.rows.items()[1].extra["x"], batch.rows.items()[1].extra["y"]) == (3, 4)


def test_pt_files_are_read_with_labels_and_groups_from_the_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "pt_files"
    write_pt(folder / "slide-1.pt", features(2, seed=3))
    write_pt(folder / "slide-2.pt", torch.from_numpy(features(3, seed=4)).to(torch.bfloat16))
    write_pt(folder / "slide-3.pt", features(1, seed=5))
    write_csv(
        folder / "manifest.csv",
        ["slide_id", "label", "group", "site"],
        [["slide-1", "LUAD", "patient-x", "A"], ["slide-2", "LUSC", "patient-x", "B"]],
    )

    archive = FeatureArchive.open(folder)
    batches, refused = read_all(archive)

    assert archive.layout == "pt"
    assert refused == []
    assert [len(batch.rows) for batch in batches] == [2, 3, 1]
    first, second, third = (batch.rows.items()[0] for batch in batches)
    assert (first.label, first.group, first.extra["site"]) == ("LUAD", "patient-x", "A")
    assert (second.label, second.group) == ("LUSC", "patient-x")
    assert (third.label, third.group) == (None, "slide-3")
    assert batches[1].vectors.dtype == np.float32


def test_a_manifest_may_name_columns_of_its_own(tmp_path: Path) -> None:
    write_pt(tmp_path / "s1.pt", features(1, seed=6))
    write_csv(
        tmp_path / "manifest.csv", ["case", "cancer_type", "patient_id"], [["s1", "BRCA", "p1"]]
    )
    columns = FeatureColumns(slide_id="case", label="cancer_type", group="patient_id")

    (batch,), _ = read_all(FeatureArchive.open(tmp_path, FeatureOptions(columns=columns)))

    assert (batch.rows.items()[0].label, batch.rows.items()[0].group) == ("BRCA", "p1")


def npy_archive(tmp_path: Path, matrix: np.ndarray) -> Path:
    path = tmp_path / "regions.npy"
    np.save(path, matrix)
    rows = [
        [f"slide-{i // 3}", f"patient-{i // 6}", f"type-{i % 2}", "sub"] for i in range(len(matrix))
    ]
    write_csv(tmp_path / "regions.csv", ["slide_id", "patient_id", "cancer_type", "subtype"], rows)
    return path


SHARED_COLUMNS = FeatureColumns(label="cancer_type", group="patient_id")


def test_an_npy_matrix_streams_in_chunks_with_the_rows_of_its_csv(tmp_path: Path) -> None:
    matrix = features(7, seed=7).astype(np.float16)
    options = FeatureOptions(columns=SHARED_COLUMNS, chunk_rows=3)

    archive = FeatureArchive.open(npy_archive(tmp_path, matrix), options)
    batches, refused = read_all(archive)

    assert archive.layout == "npy"
    assert refused == []
    assert [len(batch.rows) for batch in batches] == [3, 3, 1]
    assert [batch.last for batch in batches] == [False, False, True]
    np.testing.assert_array_equal(
        np.concatenate([batch.vectors for batch in batches]), matrix.astype(np.float32)
    )
    row5 = batches[1].rows.items()[2]
    assert (row5.source, row5.label, row5.group) == ("regions.npy", "type-1", "patient-0")
    assert row5.extra == {"subtype": "sub", "slide_id": "slide-1", "row": 5}
    assert archive.dim == D


def test_the_shared_hipt_regions_read_with_cancer_type_and_patient_columns() -> None:
    data = SHARED_DATA / "tcga-hipt-regions-192d" / "regions.npy"
    options = FeatureOptions(columns=SHARED_COLUMNS, dim=192, chunk_rows=1000)

    first = next(FeatureArchive.open(data, options).batches())

    assert isinstance(first, FeatureBatch)
    expected = np.load(data, mmap_mode="r")[:1000].astype(np.float32)
    np.testing.assert_array_equal(first.vectors, expected)
    with (data.with_suffix(".csv")).open(newline="") as handle:
        lines = list(csv.DictReader(handle))[:1000]
    assert [item.label for item in first.rows.items()] == [line["cancer_type"] for line in lines]
    assert [item.group for item in first.rows.items()] == [line["patient_id"] for line in lines]
    assert first.rows.items()[7].extra == {
        "subtype": lines[7]["subtype"],
        "slide_id": lines[7]["slide_id"],
        "row": 7,
    }
    assert (first.rows.items()[0].source, first.rows.items()[0].archive) == (
        "regions.npy",
        "tcga-hipt-regions-192d",
    )
    assert not first.last


def test_an_npy_csv_without_the_named_columns_is_refused_naming_them(tmp_path: Path) -> None:
    archive = FeatureArchive.open(npy_archive(tmp_path, features(2, seed=8)))

    _, (refused,) = read_all(archive)

    assert "regions.csv" in str(refused.error)
    assert "'label', 'group'" in str(refused.error)


def test_an_npy_csv_with_another_number_of_lines_is_refused(tmp_path: Path) -> None:
    path = npy_archive(tmp_path, features(4, seed=9))
    np.save(path, features(5, seed=9))

    _, (refused,) = read_all(FeatureArchive.open(path, FeatureOptions(columns=SHARED_COLUMNS)))

    assert str(refused.error) == "regions.csv: 4 lines for 5 rows of the matrix"


def test_an_npy_csv_line_with_a_missing_field_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = npy_archive(tmp_path, features(3, seed=9))
    lines = (tmp_path / "regions.csv").read_text().splitlines()
    lines[2] = "slide-0,patient-0"
    (tmp_path / "regions.csv").write_text("\n".join(lines) + "\n")

    _, (refused,) = read_all(FeatureArchive.open(path, FeatureOptions(columns=SHARED_COLUMNS)))

    assert str(refused.error) == "regions.csv:3: 2 fields, the header has 4"


def test_a_quoted_csv_with_windows_line_ends_reads_as_its_plain_twin(tmp_path: Path) -> None:
    for folder in ("plain", "quoted"):
        (tmp_path / folder).mkdir()
    plain = npy_archive(tmp_path / "plain", features(4, seed=10))
    quoted = npy_archive(tmp_path / "quoted", features(4, seed=10))
    header = "slide_id,patient_id,cancer_type,subtype"
    lines = [f'slide-{i // 3},patient-{i // 6},type-{i % 2},"sub, quoted"' for i in range(4)]
    (tmp_path / "quoted" / "regions.csv").write_bytes("\r\n".join([header, *lines, ""]).encode())
    options = FeatureOptions(columns=SHARED_COLUMNS)

    ((plain_batch,), _), ((quoted_batch,), _) = (
        read_all(FeatureArchive.open(path, options)) for path in (plain, quoted)
    )

    plain_rows, quoted_rows = plain_batch.rows, quoted_batch.rows
    assert quoted_rows.slide_ids == plain_rows.slide_ids == ["slide-0"] * 3 + ["slide-1"]
    assert (quoted_rows.groups, quoted_rows.labels) == (plain_rows.groups, plain_rows.labels)
    assert quoted_rows.columns == {"subtype": ["sub, quoted"] * 4}


def test_nan_rows_of_an_npy_matrix_are_refused_by_row_and_the_others_indexed(
    tmp_path: Path,
) -> None:
    matrix = features(6, seed=10)
    matrix[1, 0] = np.nan
    matrix[4, 3] = np.inf
    archive = FeatureArchive.open(
        npy_archive(tmp_path, matrix), FeatureOptions(columns=SHARED_COLUMNS)
    )

    batches, (refused,) = read_all(archive)

    assert refused.error.rows == (1, 4)
    assert "regions.npy: 2 of 6 rows hold NaN or Inf (rows 1, 4)" in str(refused.error)
    assert [item.extra["row"] for item in batches[0].rows.items()] == [0, 2, 3, 5]
    np.testing.assert_array_equal(batches[0].vectors, matrix[[0, 2, 3, 5]])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncate", "truncated"),
        ("objects", "dtype object is not numeric"),
        ("strings", "dtype <U3 is not numeric"),
        ("vector", "expected rows x D"),
    ],
)
def test_a_broken_npy_matrix_is_refused_naming_the_file(
    tmp_path: Path, damage: str, problem: str
) -> None:
    path = npy_archive(tmp_path, features(3, seed=11))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "objects":
        np.save(path, np.array([[1, "a"]] * 3, dtype=object), allow_pickle=True)
    elif damage == "strings":
        np.save(path, np.array([["abc"]] * 3))
    else:
        np.save(path, np.zeros(3, dtype=np.float32))

    batches, (refused,) = read_all(
        FeatureArchive.open(path, FeatureOptions(columns=SHARED_COLUMNS))
    )

    assert batches == []
    assert str(refused.error).startswith("regions.npy: ")
    assert problem in str(refused.error)


def bad_h5_archive(folder: Path) -> dict[str, str]:
    """Two good slides and one bad file of each kind; returns bad file -> expected problem."""
    write_h5(folder / "good-1.h5", features(3, seed=12))
    write_h5(
        folder / "good-2.h5",
        features(2, seed=13),
        np.array([[0, 0], [256, 0]]),
        patch_size=256,
        patch_level=0,
    )
    write_h5(folder / "wide.h5", features(2, seed=14, dim=D + 1))
    nan = features(4, seed=15)
    nan[2, 5] = np.nan
    write_h5(folder / "nan.h5", nan)
    (folder / "empty.h5").write_bytes(b"")
    write_h5(folder / "no-rows.h5", np.zeros((0, D), dtype=np.float32))
    write_h5(folder / "cut.h5", features(64, seed=16))
    (folder / "cut.h5").write_bytes((folder / "cut.h5").read_bytes()[:1000])
    with h5py.File(folder / "text.h5", "w") as handle:
        handle.create_dataset("features", data=np.array([[b"ab", b"cd"]]))
    with h5py.File(folder / "other.h5", "w") as handle:
        handle.create_dataset("embeddings", data=features(2, seed=17))
    return {
        "wide.h5": f"{D + 1} features per row, expected {D}",
        "nan.h5": "1 of 4 rows hold NaN or Inf (rows 2)",
        "empty.h5": "empty file (0 bytes)",
        "no-rows.h5": "empty: features of shape (0, 8)",
        "cut.h5": "unreadable or truncated HDF5 file",
        "text.h5": "dtype |S2 is not numeric",
        "other.h5": "no 'features' dataset (embeddings)",
    }


def test_bad_h5_files_are_refused_by_name_while_the_good_ones_are_read(tmp_path: Path) -> None:
    expected = bad_h5_archive(tmp_path / "slides")

    batches, refused = read_all(FeatureArchive.open(tmp_path / "slides", FeatureOptions(dim=D)))

    assert sorted(batch.file.source for batch in batches) == ["good-1.h5", "good-2.h5"]
    problems = {outcome.file.source: str(outcome.error) for outcome in refused}
    assert sorted(problems) == sorted(expected)
    for source, problem in expected.items():
        assert problems[source].startswith(f"{source}: ")
        assert problem in problems[source]
    assert all(isinstance(outcome.error, FeatureFileError) for outcome in refused)


def test_bad_pt_files_are_refused_by_name_while_the_good_ones_are_read(tmp_path: Path) -> None:
    write_pt(tmp_path / "good.pt", features(2, seed=18))
    write_pt(tmp_path / "complex.pt", torch.zeros((2, D), dtype=torch.complex64))
    write_pt(tmp_path / "cut.pt", features(50, seed=19))
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:300])
    torch.save({"not": "features"}, tmp_path / "dict.pt")
    inf = features(2, seed=20)
    inf[0, 0] = -np.inf
    write_pt(tmp_path / "inf.pt", inf)

    batches, refused = read_all(FeatureArchive.open(tmp_path))

    assert [batch.file.source for batch in batches] == ["good.pt"]
    problems = {outcome.file.source: str(outcome.error) for outcome in refused}
    assert "dtype torch.complex64 is not numeric" in problems["complex.pt"]
    assert "unreadable or truncated .pt file" in problems["cut.pt"]
    assert "holds a dict, not a tensor" in problems["dict.pt"]
    assert "1 of 2 rows hold NaN or Inf (rows 0)" in problems["inf.pt"]


def test_a_pickled_object_in_a_pt_file_is_refused_unread(tmp_path: Path) -> None:
    torch.save({"features": torch.zeros(2, D), "note": Path("x")}, tmp_path / "pickled.pt")

    _, (refused,) = read_all(FeatureArchive.open(tmp_path))

    assert refused.file.source == "pickled.pt"
    assert "unreadable" in str(refused.error)


def test_the_first_readable_file_sets_the_dimension_when_none_is_given(tmp_path: Path) -> None:
    write_pt(tmp_path / "a.pt", features(1, seed=21, dim=6))
    write_pt(tmp_path / "b.pt", features(1, seed=22, dim=7))

    archive = FeatureArchive.open(tmp_path)
    _, (refused,) = read_all(archive)

    assert archive.dim == 6
    assert str(refused.error) == "b.pt: 7 features per row, expected 6 (the index's dimension)"


def test_a_folder_with_no_feature_files_or_both_kinds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no \.h5 or \.pt files"):
        detect_layout(tmp_path)
    write_pt(tmp_path / "a.pt", features(1, seed=23))
    write_h5(tmp_path / "b.h5", features(1, seed=24))
    with pytest.raises(SourceError, match=r"both \.h5 and \.pt"):
        detect_layout(tmp_path)


def test_an_npy_without_its_csv_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", features(2, seed=25))
    with pytest.raises(SourceError, match=r"no rows\.csv beside it"):
        FeatureArchive.open(tmp_path / "rows.npy")


def write_to(index: ArchiveIndex, batch: FeatureBatch) -> None:
    """What the index writer does with a batch: add the rows not stored yet, journal its file
    when done."""
    fresh = np.flatnonzero(~index.stored_rows(batch.rows))
    index.add_rows(batch.vectors[fresh], [batch.rows.take(fresh)])
    if batch.last:
        index.journal.mark_sources_finished(
            [FinishedSource(batch.journal_key, batch.fingerprint, len(batch.rows), 0)]
        )


def test_an_interrupted_run_resumes_without_rereading_or_duplicating_finished_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    for slide in range(4):
        write_h5(folder / f"slide-{slide}.h5", features(5, seed=30 + slide, dim=DIM))
    index = new_index(tmp_path / "index")
    options = FeatureOptions(dim=index.descriptor_dim)
    first_run = FeatureArchive.open(folder, options).batches(index.journal.finished_source)
    for _ in range(2):  # interrupted after two slides
        outcome = next(first_run)
        assert isinstance(outcome, FeatureBatch)
        write_to(index, outcome)
    # the third slide's rows were added but the run died before journalling it
    third = next(first_run)
    assert isinstance(third, FeatureBatch)
    index.add_rows(third.vectors, [third.rows])
    index.close()

    index = ArchiveIndex.open(tmp_path / "index")
    resumed, refused = read_all(
        FeatureArchive.open(folder, options), finished=index.journal.finished_source
    )
    for batch in resumed:
        write_to(index, batch)

    assert refused == []
    assert [batch.file.source for batch in resumed] == ["slide-2.h5", "slide-3.h5"]
    assert len(index) == 20
    again, _ = read_all(
        FeatureArchive.open(folder, options), finished=index.journal.finished_source
    )
    assert again == []
    index.close()


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    write_h5(tmp_path / "a.h5", features(2, seed=40))
    archive = FeatureArchive.open(tmp_path)
    (batch,), _ = read_all(archive)
    journal = {batch.journal_key: batch.fingerprint}
    assert batch.fingerprint == hashlib.sha256((tmp_path / "a.h5").read_bytes()).hexdigest()

    write_h5(tmp_path / "a.h5", features(3, seed=41))
    (again,), _ = read_all(FeatureArchive.open(tmp_path), finished=journal.get)

    assert len(again.rows) == 3


def test_vectors_of_another_dimension_than_an_existing_index_are_refused(tmp_path: Path) -> None:
    index = new_index(tmp_path / "index")
    write_pt(tmp_path / "archive" / "fits.pt", features(2, seed=42, dim=DIM))
    write_pt(tmp_path / "archive" / "other.pt", features(2, seed=43, dim=DIM // 2))

    archive = FeatureArchive.open(tmp_path / "archive", FeatureOptions(dim=index.descriptor_dim))
    batches, (refused,) = read_all(archive)
    for batch in batches:
        write_to(index, batch)

    assert len(index) == 2
    assert str(refused.error) == (
        f"other.pt: {DIM // 2} features per row, expected {DIM} (the index's dimension)"
    )
    index.close()


def test_an_npy_archive_whose_csv_changed_is_read_again(tmp_path: Path) -> None:
    path = npy_archive(tmp_path, features(2, seed=44))
    options = FeatureOptions(columns=SHARED_COLUMNS)
    (batch,), _ = read_all(FeatureArchive.open(path, options))
    journal = {batch.journal_key: batch.fingerprint}
    assert read_all(FeatureArchive.open(path, options), finished=journal.get) == ([], [])

    csv_path = tmp_path / "regions.csv"
    csv_path.write_text(csv_path.read_text().replace("type-1", "type-9"))
    (again,), _ = read_all(FeatureArchive.open(path, options), finished=journal.get)

    assert [item.label for item in again.rows.items()] == ["type-0", "type-9"]
