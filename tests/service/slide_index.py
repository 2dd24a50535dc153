"""An index of two small whole-slide images built by `histosearch index --source slides`.

Two pyramidal TIFFs at 0.25 um/px (mosaics of real Kather 2016 tiles on glass, one 150 px tile at
0.5 um/px per 300 px cell, 16 tissue cells each) in label folders TUMOR and STROMA, indexed with a
small randomly initialised model. The archive folder is ``<root>/archive``: a service reads the
slides with ``HISTOSEARCH_ARCHIVE_ROOTS=<root>`` (`archive_roots`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from indexer.cli import main
from model import build_model, save_checkpoint
from tests.indexer.ingest.slide_samples import checkerboard_mosaic, write_mosaic_slide
from tests.service.conftest import SMALL_CARD

CELL = 300
TILES_PER_SLIDE = 16


def archive_roots(index_dir: Path) -> dict[str, str]:
    """The service's environment that lets it read the slides of `build_slide_index`."""
    return {"HISTOSEARCH_ARCHIVE_ROOTS": str(index_dir.parent)}


def build_slide_index(root: Path) -> tuple[Path, dict[str, Path]]:
    """(index directory, slide name -> path) under ``root``."""
    slides = {}
    for label, name, phase in (("TUMOR", "slide-a", 0), ("STROMA", "slide-b", 1)):
        cells = [(c, r) for r in range(6) for c in range(8) if (c + r + phase) % 3 == 0]
        (root / "archive" / label).mkdir(parents=True)
        path = root / "archive" / label / f"{name}.tif"
        write_mosaic_slide(path, checkerboard_mosaic(8 * CELL, 6 * CELL, CELL, cells), 0.25)
        slides[name] = path
    torch.manual_seed(0)
    save_checkpoint(build_model(SMALL_CARD).eval(), root / "model.pt")
    index_dir = root / "index"
    argv = ["index", "--source", "slides", "--data", str(root / "archive"), "--index"]
    argv += [str(index_dir), "--checkpoint", str(root / "model.pt"), "--mpp", "0.5"]
    if main([*argv, "--tile-size", "150", "--no-progress", "--device", "cpu"]) != 0:
        raise RuntimeError("histosearch index --source slides failed")
    return index_dir, slides
