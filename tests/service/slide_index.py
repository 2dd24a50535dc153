"""An index of two small whole-slide images built by `histosearch index --source slides`.

Two pyramidal TIFFs at 0.25 um/px (mosaics of real Kather 2016 tiles on glass, one 150 px tile at
0.5 um/px per 300 px cell, 16 tissue cells each) in label folders TUMOR and STROMA, indexed with a
small randomly initialised model. The archive folder is ``<root>/archive``: a service reads the
slides with ``HISTOSEARCH_ARCHIVE_ROOTS=<root>`` (`archive_roots`).
"""

from __future__ import annotations

from pathlib import Path

import openslide
import torch
from PIL import Image

from indexer.cli import main
from indexer.index.slides import read_slide_tile
from model import Embedder, SPQModel, build_model, save_checkpoint
from support.slide_samples import checkerboard_mosaic, write_mosaic_slide
from support.small_index import SMALL_CARD

CELL = 300
TILE_PX = 150
TILES_PER_SLIDE = 16


def archive_roots(index_dir: Path) -> dict[str, str]:
    """The service's environment that lets it read the slides of `build_slide_index`."""
    return {"HISTOSEARCH_ARCHIVE_ROOTS": str(index_dir.parent)}


def tissue_cells(phase: int) -> list[tuple[int, int]]:
    """(column, row) of the tissue cells of a slide (phase 0: slide-a, 1: slide-b)."""
    return [(c, r) for r in range(6) for c in range(8) if (c + r + phase) % 3 == 0]


def build_slide_index(
    root: Path, *, codewords_from_slide_a: bool = False, shards: int | None = None
) -> tuple[Path, dict[str, Path]]:
    """(index directory, slide name -> path) under ``root``; ``shards``: a sharded index.

    A randomly initialised network gives nearly the same descriptor to every tile, so its random
    codewords give most tiles one code. With ``codewords_from_slide_a`` the codewords are the 16
    tissue tiles of slide-a's own sub-vectors: each of those tiles gets a code of its own and
    finds itself first (score M), which tests of what a query finds need.
    """
    slides = {}
    for label, name, phase in (("TUMOR", "slide-a", 0), ("STROMA", "slide-b", 1)):
        (root / "archive" / label).mkdir(parents=True)
        path = root / "archive" / label / f"{name}.tif"
        cells = tissue_cells(phase)
        write_mosaic_slide(path, checkerboard_mosaic(8 * CELL, 6 * CELL, CELL, cells), 0.25)
        slides[name] = path
    torch.manual_seed(0)
    model = build_model(SMALL_CARD).eval()
    if codewords_from_slide_a:
        _codewords_from_tiles(model, slides["slide-a"])
    save_checkpoint(model, root / "model.pt")
    index_dir = root / "index"
    argv = ["index", "--source", "slides", "--data", str(root / "archive"), "--index"]
    argv += [str(index_dir), "--checkpoint", str(root / "model.pt"), "--mpp", "0.5"]
    if shards is not None:
        argv += ["--shards", str(shards)]
    if main([*argv, "--tile-size", str(TILE_PX), "--no-progress", "--device", "cpu"]) != 0:
        raise RuntimeError("histosearch index --source slides failed")
    return index_dir, slides


def slide_tile(path: Path, cell: tuple[int, int]) -> Image.Image:
    """The tile of one cell, read as the indexer reads it (level 1, TILE_PX a side)."""
    slide = openslide.OpenSlide(str(path))
    return read_slide_tile(slide, 1, (cell[0] * CELL, cell[1] * CELL, CELL, CELL), TILE_PX)


def _codewords_from_tiles(model: SPQModel, slide_path: Path) -> None:
    tiles = [slide_tile(slide_path, cell) for cell in tissue_cells(0)]
    card = model.card
    assert len(tiles) == card.codebook_size
    descriptors = Embedder(model, torch.device("cpu")).embed(tiles)
    sub_vectors = torch.from_numpy(descriptors).reshape(len(tiles), card.num_codebooks, -1)
    with torch.no_grad():
        model.quantizer.raw_codewords.copy_(sub_vectors.transpose(0, 1))
