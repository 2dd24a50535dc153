"""A real small index: the 240 Kather tiles under a small randomly initialised SPQ model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer.index.hashing import file_hash
from indexer.index.store import ArchiveIndex, NewItem
from indexer.index.thumbnails import make_thumbnail
from model import ModelCard, build_model, save_checkpoint
from model.preprocess import preprocess
from support.kather import kather_tiles

TILE_SIDE = 150
# Kather 2016 file names say where each tile was cut: "..._009.tif_Row_301_Col_151.tif".
_POSITION = re.compile(r"^\w+?_(?P<source>.+?\.tif)_Row_(?P<row>\d+)_Col_(?P<col>\d+)\.tif$")
SMALL_CARD = ModelCard(backbone="resnet18", input_size=64, num_codebooks=8, codebook_size=16)


def tile_box(path: Path) -> tuple[str, tuple[int, int, int, int] | None]:
    match = _POSITION.match(path.name)
    if match is None:
        return path.name, None
    x, y = int(match["col"]) - 1, int(match["row"]) - 1
    return match["source"], (x, y, TILE_SIDE, TILE_SIDE)


def kather_items() -> tuple[list[Image.Image], list[NewItem]]:
    """Every Kather tile with its label, group, position and (lower-bound) source size."""
    rows = kather_tiles()
    boxes = [tile_box(path) for path, _, _ in rows]
    extent: dict[str, tuple[int, int]] = {}
    for source, box in boxes:
        if box is not None:
            width, height = extent.get(source, (0, 0))
            extent[source] = (max(width, box[0] + box[2]), max(height, box[1] + box[3]))
    images, items = [], []
    for (path, label, group), (source, box) in zip(rows, boxes, strict=True):
        data = path.read_bytes()
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        images.append(image)
        items.append(
            NewItem(
                source=f"{group}/{source}",
                content_hash=file_hash(data),
                label=label,
                group=group,
                dataset="kather2016",
                tile=box,
                # The full slide sizes are not published with the tiles: the extent of its tiles.
                source_size=extent.get(source),
                thumbnail=make_thumbnail(image),
            )
        )
    return images, items


def build_small_index(directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(SMALL_CARD).eval()
    checkpoint = directory.parent / f"{directory.name}-model.pt"
    save_checkpoint(model, checkpoint)
    index = ArchiveIndex.create(directory, checkpoint)
    images, items = kather_items()
    with torch.inference_mode():
        descriptors = model.encode(preprocess(images, SMALL_CARD)).numpy().astype(np.float32)
    index.add(descriptors, items)
    index.flush()
    index.close()
    return directory
