"""Bytes per item, in RAM and on disk, as /stats reports them, checked against the directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.footprint import disk_part, index_footprint
from tests.service.test_api import make_client


def directory_bytes(directory: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(directory)
        for name in names
    )


def test_every_file_is_counted_once_either_per_item_or_as_fixed(small_index: Path) -> None:
    footprint = index_footprint(small_index, items=240, memory_bytes=240 * 50)
    (stage,) = footprint.stages
    assert stage.name == "codes" and stage.ram == pytest.approx(50)
    total = footprint.disk * 240 + footprint.fixed_disk_bytes
    assert total == pytest.approx(directory_bytes(small_index))
    assert {"codes", "ids", "metadata"} <= set(stage.disk_parts)
    model_bytes = (small_index / "model.pt").stat().st_size
    assert footprint.fixed_disk_bytes >= model_bytes


def test_files_are_put_in_their_parts_by_name() -> None:
    assert disk_part("codes.12.faiss") == "codes"
    assert disk_part("columns.12.npz") == "ids"
    assert disk_part("metadata.sqlite-wal") == "metadata"
    assert disk_part("model.pt") is None and disk_part("manifest.json") is None


def test_an_empty_index_costs_nothing_per_item(small_index: Path) -> None:
    footprint = index_footprint(small_index, items=0, memory_bytes=0)
    assert footprint.ram == 0 and footprint.disk == 0


def test_stats_report_bytes_per_item_in_ram_and_on_disk(index_copy: Path) -> None:
    with make_client(index_copy) as client:
        stats = client.get("/stats").json()
    per_item = stats["bytes_per_item"]
    # 4-byte codes: the table holds more than the code (id, filter columns), the disk far more
    # (SQLite's records and thumbnails).
    assert per_item["ram"] == pytest.approx(stats["memory_bytes"] / stats["items"], abs=0.01)
    assert per_item["ram"] > stats["code_bytes"]
    (stage,) = per_item["stages"]
    assert stage["stage"] == "codes"
    assert stage["disk"] == pytest.approx(sum(stage["disk_parts"].values()), abs=0.05)
    assert per_item["disk"] > per_item["ram"]
    assert stats["index_kind"] == "images" and stats["feature_dim"] is None


def test_a_second_stages_files_are_its_own_stage(tmp_path: Path) -> None:
    assert disk_part("fine.3.npy") == "fine_codes"
    assert disk_part("fine-ids.3.npy") == "fine_ids"
    directory = tmp_path / "index"
    directory.mkdir()
    (directory / "fine.1.npy").write_bytes(b"x" * 1920)
    (directory / "fine-ids.1.npy").write_bytes(b"x" * 80)
    (directory / "codes.1.faiss").write_bytes(b"x" * 40)
    footprint = index_footprint(directory, items=10, memory_bytes=500, fine_memory_bytes=30)
    codes, fine = footprint.stages
    assert (codes.name, codes.ram, codes.disk_parts) == ("codes", 50, {"codes": 4})
    assert (fine.name, fine.ram) == ("fine", 3)
    assert fine.disk_parts == {"fine_codes": 192, "fine_ids": 8}
    assert footprint.ram == 53 and footprint.disk == 204
