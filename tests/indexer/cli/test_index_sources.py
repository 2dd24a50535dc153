"""`histosearch index` stores no path of the machine: sources relative to the archive folder."""

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from indexer.cli import main
from indexer.ingest.archive_root import archive_folder
from model import ModelCard, build_model, save_checkpoint
from tests.indexer.index_helpers import SHARED_DATA

KATHER = SHARED_DATA / "kather2016-texture-240"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    paths = sorted(KATHER.rglob("*.tif"))[::60]
    if not paths:
        pytest.skip("Kather 2016 tiles are missing")
    root = tmp_path / "my-archive"
    lines = ["path,label,group"]
    for number, path in enumerate(paths):
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        lines.append(f"{path.parent.name}/{path.name},{path.parent.name},g{number}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    save_checkpoint(build_model(ModelCard(input_size=32)), tmp_path / "model.pt")
    return root


def stored(index_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    with sqlite3.connect(index_dir / "metadata.sqlite") as database:
        items = database.execute("SELECT source, archive FROM items ORDER BY id").fetchall()
        journal = [row[0] for row in database.execute("SELECT source FROM sources")]
    return items, journal


@pytest.mark.parametrize("data", ["my-archive", "my-archive/manifest.csv"])
def test_index_stores_sources_relative_to_the_archive_folder(archive, tmp_path, data, capsys):
    index_dir = tmp_path / "index"
    argv = ["index", "--data", str(tmp_path / data), "--index", str(index_dir), "--no-progress"]
    assert main([*argv, "--checkpoint", str(tmp_path / "model.pt")]) == 0
    items, journal = stored(index_dir)
    assert len(items) == 4 and {name for _, name in items} == {"my-archive"}
    assert all(not Path(source).is_absolute() and "/" in source for source, _ in items)
    assert sorted(journal) == sorted(f"my-archive/{source}" for source, _ in items)
    assert str(tmp_path) not in repr(items) + repr(journal)
    # A second run over the same archive finds every file finished.
    capsys.readouterr()
    assert main(argv) == 0
    assert "finished in earlier runs: 4" in capsys.readouterr().out


def test_the_archive_folder_of_a_csv_is_the_folder_it_lies_in(tmp_path):
    (tmp_path / "list.csv").write_text("path\n")
    assert archive_folder(tmp_path / "list.csv") == tmp_path
    assert archive_folder(tmp_path) == tmp_path
