"""Encoding benchmark: images per second of the whole indexing pipeline vs the bare forward pass.

    nice python -m benchmarks.indexer.encoding [--repeats 3] [--batch-size 64] [--input-size 64]

The archive is real tiles from ``../shared/data`` (Kather 2016 TIFFs and LC25000 JPEGs). The model
is an SPQ model with the default card, or that card with another input size (random weights: speed
does not depend on training). The input size sets how the forward pass weighs against the fixed
per-tile work (read, decode, hash, thumbnail) that the pipeline adds.

- ``bare forward``: ``SPQModel.encode`` on the same batches, already decoded, resized and normalised
  before the clock starts: the floor the pipeline cannot beat.
- ``pipeline``: `index_archive` into a fresh index directory: read, hash, decode (thread pool),
  tile, tissue check, thumbnail, preprocess, embed, durable SQLite write, final snapshot.

Each measurement is repeated and the best run kept (the machine is shared). Results: a table on
stdout and ``benchmarks/results/encoding.json``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, shared_data_root, write_result
from indexer.index.store import ArchiveIndex
from indexer.index.tiling import TilingConfig
from indexer.ingest.pipeline import PipelineConfig, index_archive
from indexer.ingest.sources import ArchiveImage, load_folder
from model import Embedder, ModelCard, SPQModel, build_model
from model.preprocess import open_upright_rgb, preprocess

DATASETS = ("kather2016-texture-240", "lc25000-lung-224px")


def archive(per_dataset: int) -> list[ArchiveImage]:
    images: list[ArchiveImage] = []
    for name in DATASETS:
        images += load_folder(shared_data_root() / name)[:per_dataset]
    return images


def bare_forward_seconds(model: SPQModel, images: Sequence[ArchiveImage], batch_size: int) -> float:
    """Time of ``encode`` alone over the same batches, inputs prepared beforehand."""
    decoded = [open_upright_rgb(image.path) for image in images]
    batches = [
        preprocess(decoded[start : start + batch_size], model.card)
        for start in range(0, len(decoded), batch_size)
    ]
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model.encode(batch)
    return time.perf_counter() - started


def pipeline_seconds(
    model: SPQModel, images: Sequence[ArchiveImage], batch_size: int, workdir: Path
) -> tuple[float, int]:
    """Time of a whole indexing run into a fresh directory; returns (seconds, tiles added)."""
    directory = Path(tempfile.mkdtemp(dir=workdir))
    index = ArchiveIndex.create_from_codebooks(
        directory / "index",
        model.codebooks().detach().numpy(),
        card=model.card.model_dump(mode="json"),
    )
    config = PipelineConfig(
        tiling=TilingConfig(tile_size=224), batch_size=batch_size, workers=2, progress=False
    )
    started = time.perf_counter()
    embedder = Embedder(model, torch.device("cpu"), batch_size)
    summary = index_archive(images, index, embedder, config)
    elapsed = time.perf_counter() - started
    index.close()
    return elapsed, summary.tiles_added


def run(
    per_dataset: int, repeats: int, batch_size: int, output: Path, input_size: int | None = None
) -> dict[str, Any]:
    torch.manual_seed(0)
    card = ModelCard() if input_size is None else ModelCard(input_size=input_size)
    model = build_model(card).eval()
    images = archive(per_dataset)
    bare, piped, tiles = float("inf"), float("inf"), 0
    with tempfile.TemporaryDirectory(prefix="histosearch-encoding-") as workdir:
        for _ in range(repeats):
            # Interleaved so that both see the same share of a shared machine.
            bare = min(bare, bare_forward_seconds(model, images, batch_size))
            seconds, tiles = pipeline_seconds(model, images, batch_size, Path(workdir))
            piped = min(piped, seconds)
    result = {
        "images": len(images),
        "tiles_added": tiles,
        "batch_size": batch_size,
        "card": {key: model.card.model_dump()[key] for key in ("backbone", "input_size")},
        "bare_forward_images_per_s": len(images) / bare,
        "pipeline_images_per_s": len(images) / piped,
        "pipeline_over_bare": bare / piped,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(
        f"{'input px':>8} | {'images':>6} | {'bare forward img/s':>18} | {'pipeline img/s':>14} | "
        f"{'ratio':>5}"
    )
    print(
        f"{model.card.input_size:>8} | {len(images):>6} | "
        f"{result['bare_forward_images_per_s']:18.1f} | "
        f"{result['pipeline_images_per_s']:14.1f} | {result['pipeline_over_bare']:5.2f}"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_result(output, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--per-dataset", type=int, default=240, help="images from each dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--input-size", type=int, help="model input side in pixels (default: the card's, 64)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "encoding.json")
    args = parser.parse_args(argv)
    run(args.per_dataset, args.repeats, args.batch_size, args.output, args.input_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
