"""A feature archive read whole into arrays, through the same reader indexing streams."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.ingest.feature_table import TCGA_COLUMNS, read_feature_table
from indexer.ingest.features import FeatureColumns
from indexer.ingest.sources import SourceError
from support.data import SHARED_DATA, missing_data_reason

TCGA = SHARED_DATA / "tcga-hipt-regions-192d"


def write_npy_archive(folder: Path, matrix: np.ndarray, slides: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "rows.npy", matrix)
    with (folder / "rows.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "cancer_type", "patient_id"])
        writer.writerows([slide, f"type-{slide[-1]}", f"patient-{slide}"] for slide in slides)
    return folder / "rows.npy"


def test_npy_rows_come_with_their_slide_group_and_label_and_a_limit_cuts(tmp_path):
    matrix = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float16)
    path = write_npy_archive(tmp_path, matrix, ["s1"] * 4 + ["s2"] * 5)
    table = read_feature_table(path, TCGA_COLUMNS)
    np.testing.assert_array_equal(table.vectors, matrix.astype(np.float32))
    assert table.slides.tolist() == ["s1"] * 4 + ["s2"] * 5
    assert table.groups[-1] == "patient-s2" and table.labels[0] == "type-1"
    assert table.rows_of(["patient-s1"]).tolist() == [0, 1, 2, 3]
    assert len(read_feature_table(path, TCGA_COLUMNS, limit=6)) == 6


def test_a_folder_of_pt_files_keeps_the_good_files_and_names_the_bad_one(tmp_path):
    torch.save(torch.ones(3, 4), tmp_path / "good.pt")
    torch.save(torch.ones(2, 5), tmp_path / "wide.pt")
    table = read_feature_table(tmp_path, FeatureColumns())
    assert len(table) == 3 and table.slides.tolist() == ["good"] * 3
    assert table.groups.tolist() == ["good"] * 3 and table.labels.tolist() == [""] * 3
    (refused,) = table.refused
    assert refused.file.source == "wide.pt" and "5 features per row, expected 4" in str(
        refused.error
    )


def test_an_archive_without_a_readable_row_is_refused(tmp_path):
    torch.save(torch.full((2, 4), float("nan")), tmp_path / "nan.pt")
    with pytest.raises(SourceError, match=r"no readable feature rows.*nan\.pt"):
        read_feature_table(tmp_path)


@pytest.mark.skipif(missing_data_reason(TCGA) is not None, reason=str(missing_data_reason(TCGA)))
def test_the_shared_regions_read_with_patient_and_cancer_type():
    table = read_feature_table(TCGA / "regions.npy", TCGA_COLUMNS, limit=500)
    assert table.vectors.shape == (500, 192) and table.vectors.dtype == np.float32
    assert table.groups[0] == "TCGA-02-0004" and table.labels[0] == "LGG"
