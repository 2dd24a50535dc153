"""Feature rows through the feature model into the ingest writer: journal, duplicates, parts."""

from __future__ import annotations

import csv
import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.index.store import ArchiveIndex
from indexer.ingest.feature_index import index_feature_archive, read_ahead
from indexer.ingest.features import FeatureArchive, FeatureOptions
from indexer.ingest.writer import PipelineConfig
from model.card import ModelCard
from model.feature_encoder import FeatureEncoder
from model.feature_spq import FeatureSPQModel, save_feature_checkpoint

DIM = 12
CARD = {
    "backbone": "features:toy",
    "num_codebooks": 4,
    "codebook_size": 16,
    "codeword_dim": 3,
    "input_dim": DIM,
    "feature_model": "toy",
}


def feature_index(root: Path) -> tuple[ArchiveIndex, FeatureEncoder]:
    torch.manual_seed(0)
    model = FeatureSPQModel(ModelCard.model_validate(CARD)).eval()
    save_feature_checkpoint(model, root / "model.pt")
    index = ArchiveIndex.create(root / "index", root / "model.pt")
    return index, FeatureEncoder(model, torch.device("cpu"))


def npy_archive(folder: Path, rows: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "rows.npy", np.random.default_rng(seed).normal(size=(rows, DIM)))
    with (folder / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label", "group"])
        writer.writerows([f"s{row // 10}", "a", f"p{row // 20}"] for row in range(rows))
    return folder / "rows.npy"


def run(index: ArchiveIndex, encoder: FeatureEncoder, data: Path, rows_per_part: int):
    archive = FeatureArchive.open(data, FeatureOptions(dim=DIM, chunk_rows=rows_per_part))
    config = PipelineConfig(batch_size=rows_per_part, progress=False)
    return index_feature_archive(archive, index, encoder, config)


def test_a_matrix_read_in_parts_is_journalled_once_its_last_part_is_written(tmp_path):
    index, encoder = feature_index(tmp_path)
    data = npy_archive(tmp_path / "a", rows=95, seed=1)
    summary = run(index, encoder, data, rows_per_part=20)
    assert summary.counts.tiles_added == 95 and len(index) == 95
    (file,) = FeatureArchive.open(data).files
    key = FeatureArchive.open(data).journal_key(file)
    assert index.journal.finished_source(key) == file.fingerprint()
    again = run(index, encoder, data, rows_per_part=20)
    assert again.counts.images_finished_before == 1 and again.counts.tiles_added == 0
    index.close()


def test_the_same_bytes_under_another_name_are_a_duplicate_file(tmp_path):
    index, encoder = feature_index(tmp_path)
    run(index, encoder, npy_archive(tmp_path / "a", rows=30, seed=2), rows_per_part=8)
    copy = run(index, encoder, npy_archive(tmp_path / "b", rows=30, seed=2), rows_per_part=8)
    assert copy.counts.duplicate_files == 1 and copy.counts.tiles_added == 0
    assert len(index) == 30
    index.close()


class CountingIndex(ArchiveIndex):
    """An index that counts its adds (each one SQLite commit)."""

    adds = 0

    def add_rows(self, descriptors, blocks, *, fine=None):
        type(self).adds += 1
        return super().add_rows(descriptors, blocks, fine=fine)


def pt_folder(folder: Path, files: int, rows: int, copies: dict[int, int] | None = None) -> Path:
    """``files`` per-slide ``.pt`` files of ``rows`` rows; ``copies`` maps a file number to the
    number of the file whose bytes it repeats."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(3)
    copies = copies or {}
    for number in range(files):
        if number not in copies:
            torch.save(torch.randn(rows, DIM, generator=generator), folder / f"s{number:02d}.pt")
    for number, original in copies.items():
        shutil.copyfile(folder / f"s{original:02d}.pt", folder / f"s{number:02d}.pt")
    return folder


def test_rows_of_many_small_files_share_one_write_and_every_file_is_journalled(tmp_path):
    _, encoder = feature_index(tmp_path)
    index = CountingIndex.create(tmp_path / "counted", tmp_path / "model.pt")
    data = pt_folder(tmp_path / "slides", files=12, rows=5)
    summary = run(index, encoder, data, rows_per_part=100)
    assert summary.counts.tiles_added == 60 and len(index) == 60
    assert CountingIndex.adds == 1  # one batch of 60 rows, not one write per file
    archive = FeatureArchive.open(data)
    for file in archive.files:
        assert index.journal.finished_source(archive.journal_key(file)) == file.fingerprint()
    again = run(index, encoder, data, rows_per_part=100)
    assert again.counts.images_finished_before == 12 and again.counts.tiles_added == 0
    index.close()


def test_a_file_with_the_bytes_of_one_still_queued_in_the_run_is_a_duplicate_file(tmp_path):
    index, encoder = feature_index(tmp_path)
    data = pt_folder(tmp_path / "slides", files=6, rows=4, copies={4: 1})
    summary = run(index, encoder, data, rows_per_part=100)
    assert summary.counts.duplicate_files == 1
    assert summary.counts.tiles_added == 20 and summary.counts.tiles_duplicate == 0
    assert len(index) == 20
    index.close()


def test_reading_ahead_keeps_the_order_and_raises_the_reader_s_error():
    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for value in read_ahead(failing()):
            got.append(value)
    assert got == [1]


def test_a_consumer_that_stops_early_stops_the_reader():
    produced = []

    def endless() -> Iterator[int]:
        for number in itertools.count():
            produced.append(number)
            yield number

    reader = read_ahead(endless(), depth=2)
    assert next(reader) == 0
    reader.close()
    stopped_at = len(produced)
    time.sleep(0.3)
    assert len(produced) == stopped_at <= 4
    assert "feature-reader" not in [thread.name for thread in threading.enumerate()]
