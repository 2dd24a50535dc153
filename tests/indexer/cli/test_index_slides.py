"""`histosearch index --source slides`: every option of the index config reaches slides too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from indexer.cli import main
from indexer.index.opening import open_index
from indexer.index.protocol import Index
from indexer.index.shards import ShardedIndex
from indexer.index.slides import read_slide_tile
from indexer.index.store import ArchiveIndex
from model import Embedder, ModelCard, build_model, save_checkpoint
from support.slide_samples import checkerboard_mosaic, write_mosaic_slide

CELL = 300
TILE_PX = 150
SLIDES = {"slide-a": 0, "slide-b": 1, "slide-c": 2}


def tissue_cells(phase: int) -> list[tuple[int, int]]:
    return [(c, r) for r in range(4) for c in range(6) if (c + r + phase) % 3 == 0]


@pytest.fixture(scope="module")
def slide_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated pyramidal slides (0.25 um/px, tissue in a third of the cells) and a small
    randomly initialised model."""
    root = tmp_path_factory.mktemp("slides")
    for name, phase in SLIDES.items():
        folder = root / "archive" / ("TUMOR" if phase % 2 else "STROMA")
        folder.mkdir(parents=True, exist_ok=True)
        mosaic = checkerboard_mosaic(6 * CELL, 4 * CELL, CELL, tissue_cells(phase))
        write_mosaic_slide(folder / f"{name}.tif", mosaic, 0.25)
    torch.manual_seed(0)
    save_checkpoint(build_model(ModelCard(input_size=32)), root / "model.pt")
    return root


def index_slides(root: Path, index_dir: Path, *extra: str) -> int:
    argv = ["index", "--source", "slides", "--data", str(root / "archive"), "--index"]
    argv += [str(index_dir), "--checkpoint", str(root / "model.pt"), "--mpp", "0.5"]
    return main([*argv, "--tile-size", str(TILE_PX), "--no-progress", "--device", "cpu", *extra])


def query_tiles(root: Path) -> list[Image.Image]:
    import openslide

    tiles = []
    for path in sorted((root / "archive").rglob("*.tif")):
        slide = openslide.OpenSlide(str(path))
        for column, row in tissue_cells(SLIDES[path.stem])[:3]:
            tiles.append(read_slide_tile(slide, 1, (column * CELL, row * CELL, CELL, CELL), 150))
        slide.close()
    return tiles


def answers(index: Index, embedder: Embedder, tiles: list[Image.Image], k: int) -> list[Any]:
    hits = index.search(embedder.embed(tiles), k)
    return [
        [(hit.id, hit.score, hit.record and (hit.record.source, hit.record.tile)) for hit in row]
        for row in hits
    ]


def test_slides_indexed_with_shards_are_sharded_and_search_as_the_unsharded_index(
    slide_archive, tmp_path, capsys
):
    assert index_slides(slide_archive, tmp_path / "single") == 0
    assert index_slides(slide_archive, tmp_path / "sharded", "--shards", "3") == 0
    capsys.readouterr()
    tissue = sum(len(tissue_cells(phase)) for phase in SLIDES.values())
    device = torch.device("cpu")
    with (
        open_index(tmp_path / "single", device) as single,
        open_index(tmp_path / "sharded", device) as sharded,
    ):
        assert isinstance(single.index, ArchiveIndex)
        assert isinstance(sharded.index, ShardedIndex) and sharded.index.shard_count == 3
        assert len(sharded.index) == len(single.index) == tissue
        # Each slide is a group: its tiles lie in one shard, and the slides spread out.
        assert sum(len(shard) > 0 for shard in sharded.index.shards) >= 2
        embedder = single.embedder()
        tiles = query_tiles(slide_archive)
        for k in (1, 5, tissue):
            expected = answers(single.index, embedder, tiles, k)
            assert answers(sharded.index, embedder, tiles, k) == expected
    # Resuming the sharded index finds every slide finished in its shards' journal.
    assert index_slides(slide_archive, tmp_path / "sharded", "--shards", "3") == 0
    assert f"finished in earlier runs: {len(SLIDES)}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("source", "option", "message"),
    [
        ("folder", ["--mpp", "0.25"], "--mpp applies to --source slides only"),
        ("auto", ["--slide-mpp", "0.25"], "--slide-mpp applies to --source slides only"),
        ("slides", ["--max-image-pixels", "100"], "--max-image-pixels bounds decoded images"),
        ("slides", ["--ray-actors", "2"], "--ray-actors needs --ray"),
        ("folder", ["--ray", "auto", "--workers", "4"], "with --ray, images are read by Ray"),
        ("slides", ["--ray", "auto", "--device", "cpu"], "with --ray the cluster's actors run"),
    ],
)
def test_an_option_the_source_would_ignore_is_refused_naming_it(
    tmp_path, caplog, source, option, message
):
    argv = ["index", "--source", source, "--data", str(tmp_path), "--index", str(tmp_path / "i")]
    assert main([*argv, *option]) == 2
    assert message in caplog.text
    assert not (tmp_path / "i").exists()
