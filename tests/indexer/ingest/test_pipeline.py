"""The encoding pipeline stage by stage, then whole runs: skipping, duplicates, resuming."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.index.store import ArchiveIndex
from indexer.ingest import pipeline
from indexer.ingest.pipeline import (
    DuplicateFile,
    FinishedBefore,
    PipelineConfig,
    TiledImage,
    Unreadable,
    cut_tiles,
    decode_image,
    embed_tiles,
    index_archive,
    prepare,
    read_image,
    write_tiles,
)
from indexer.ingest.sources import ArchiveImage
from indexer.ingest.tiling import TilingConfig
from tests.indexer.index_helpers import DIM, SHARED_DATA, new_index

KATHER = SHARED_DATA / "kather2016-texture-240"
PROJECTION = np.random.default_rng(0).standard_normal((8 * 8 * 3, DIM)).astype(np.float32)


class CountingEncoder:
    """A cheap deterministic stand-in for the network; counts tiles and can fail on demand."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.tiles = 0
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def __call__(self, images):
        if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.tiles += len(images)
        pixels = np.stack([np.asarray(i.resize((8, 8)), dtype=np.float32).ravel() for i in images])
        return (pixels / 255.0 - 0.5) @ PROJECTION


def kather_archive(tmp_path: Path, count: int) -> list[ArchiveImage]:
    paths = sorted(KATHER.rglob("*.tif"))[:count]
    if len(paths) < count:
        pytest.skip("Kather 2016 tiles are missing")
    archive = []
    for number, path in enumerate(paths):
        copy = tmp_path / "archive" / path.parent.name / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        archive.append(ArchiveImage(copy, path.parent.name, f"g{number % 4}", "kather"))
    return archive


def large_slide(tmp_path: Path) -> ArchiveImage:
    """A 600 x 300 image: tissue (real tiles) on the left half, empty glass on the right."""
    canvas = Image.new("RGB", (600, 300), (243, 243, 245))
    for number, path in enumerate(sorted((KATHER / "01_TUMOR").glob("*.tif"))[:4]):
        canvas.paste(Image.open(path).convert("RGB"), ((number % 2) * 150, (number // 2) * 150))
    path = tmp_path / "slide.png"
    canvas.save(path)
    return ArchiveImage(path, "TUMOR", "slide", "synthetic")


def quiet(**options) -> PipelineConfig:
    return PipelineConfig(progress=False, **options)


def test_stages_read_decode_tile_embed_write_one_by_one(tmp_path):
    slide = large_slide(tmp_path)
    raw = read_image(slide)
    pixels = decode_image(raw)
    assert pixels.size == (600, 300) and pixels.mode == "RGB"
    tiled = cut_tiles(raw, pixels, TilingConfig(tile_size=150, min_tissue=0.5))
    assert [tile.item.tile for tile in tiled.tiles] == [
        (0, 0, 150, 150),
        (150, 0, 150, 150),
        (0, 150, 150, 150),
        (150, 150, 150, 150),
    ]
    assert tiled.background == 4
    assert tiled.tiles[0].item.source_size == (600, 300)
    thumbnail = tiled.tiles[0].item.thumbnail
    assert thumbnail is not None and thumbnail.startswith(b"\xff\xd8")
    descriptors = embed_tiles(tiled.tiles, CountingEncoder())
    assert descriptors.shape == (4, DIM)
    with new_index(tmp_path / "index") as index:
        assert write_tiles(index, tiled.tiles, descriptors) == 4
        record = index.search(descriptors[2:3], 1)[0][0].record
        assert record is not None
        assert record.tile == (0, 150, 150, 150)
        # Without an archive folder named, the image's own folder is the archive.
        assert (record.source, record.archive) == ("slide.png", slide.path.parent.name)


def test_unreadable_images_are_reported_and_skipped(tmp_path):
    archive = kather_archive(tmp_path, 6)
    garbage = tmp_path / "archive" / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = tmp_path / "archive" / "truncated.jpeg"
    Image.open(archive[0].path).convert("RGB").save(truncated, format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:300])
    missing = tmp_path / "archive" / "gone.tif"
    archive += [ArchiveImage(p, None, p.stem, "kather") for p in (garbage, truncated, missing)]
    with new_index(tmp_path / "index") as index:
        summary = index_archive(archive, index, CountingEncoder(), quiet(batch_size=4))
        assert len(index) == 6
    assert summary.tiles_added == 6
    assert sorted(Path(path).name for path, _ in summary.unreadable) == [
        "broken.png",
        "gone.tif",
        "truncated.jpeg",
    ]


def test_preparing_an_image_says_what_it_comes_to(tmp_path):
    archive = kather_archive(tmp_path, 2)
    twin = tmp_path / "twin.tif"
    shutil.copyfile(archive[0].path, twin)
    missing = ArchiveImage(tmp_path / "gone.tif", None, "gone", "kather")
    tiling = TilingConfig()
    with new_index(tmp_path / "index") as index:
        fresh = prepare(archive[0], index, tiling)
        assert isinstance(fresh, TiledImage) and len(fresh.tiles) == 1
        index_archive(archive, index, CountingEncoder(), quiet())
        assert prepare(archive[0], index, tiling) == FinishedBefore(archive[0])
        copy = ArchiveImage(twin, None, "twin", "kather")
        # The twin is named as the journal names it: archive folder name and relative path.
        twin_name = f"{archive[0].path.parent.name}/{archive[0].path.name}"
        assert prepare(copy, index, tiling) == DuplicateFile(copy, twin_name)
        unreadable = prepare(missing, index, tiling)
    assert isinstance(unreadable, Unreadable)
    assert unreadable.reason.startswith("FileNotFoundError")


def test_a_bug_in_tiling_stops_the_run_instead_of_counting_an_unreadable_image(
    tmp_path, monkeypatch
):
    archive = kather_archive(tmp_path, 3)

    def broken_tiling(*args, **kwargs):
        raise ValueError("a bug after decoding")

    monkeypatch.setattr(pipeline, "cut_tiles", broken_tiling)
    with new_index(tmp_path / "index") as index:
        with pytest.raises(ValueError, match="a bug after decoding"):
            index_archive(archive, index, CountingEncoder(), quiet())
        assert len(index) == 0


def test_floating_point_images_are_reported_unreadable_and_skipped(tmp_path):
    archive = kather_archive(tmp_path, 3)
    floating = tmp_path / "archive" / "float.tif"
    Image.open(archive[0].path).convert("F").save(floating, format="TIFF")
    archive.insert(1, ArchiveImage(floating, None, "float", "kather"))
    with new_index(tmp_path / "index") as index:
        summary = index_archive(archive, index, CountingEncoder(), quiet(batch_size=2))
        assert len(index) == 3
    assert summary.images == 4 and summary.tiles_added == 3
    [(path, reason)] = summary.unreadable
    assert Path(path).name == "float.tif"
    assert "UnsupportedPixelsError" in reason and "floating-point" in reason


def test_decode_applies_the_exif_orientation(tmp_path):
    upright = Image.open(sorted(KATHER.rglob("*.tif"))[0]).convert("RGB").crop((0, 0, 150, 100))
    # Stored turned a quarter to the left, with the EXIF tag saying how to turn it back.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpeg"
    stored.save(path, format="JPEG", quality=95, exif=exif)
    pixels = decode_image(read_image(ArchiveImage(path, None, "g", "exif")))
    assert pixels.size == (150, 100) and pixels.mode == "RGB"
    difference = np.abs(np.asarray(pixels, dtype=float) - np.asarray(upright, dtype=float))
    assert difference.mean() < 6.0


def test_sixteen_bit_greyscale_decodes_by_the_fixed_scale(tmp_path):
    values = np.tile(np.array([0, 257, 25_700, 65_535], dtype=np.uint16), (20, 5))
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    pixels = np.asarray(decode_image(read_image(ArchiveImage(path, None, "g", "png16"))))
    assert pixels.shape == (20, 20, 3)
    assert pixels[0, :4, 0].tolist() == [0, 1, 100, 255]


def test_interrupted_run_resumes_without_re_encoding_finished_images(tmp_path):
    archive = kather_archive(tmp_path, 20)
    with new_index(tmp_path / "index") as index, pytest.raises(KeyboardInterrupt):
        index_archive(archive, index, CountingEncoder(fail_after_batches=2), quiet(batch_size=4))
    resumed = CountingEncoder()
    with ArchiveIndex.open(tmp_path / "index") as index:
        assert len(index) == 8  # two batches were acknowledged before the interruption
        summary = index_archive(archive, index, resumed, quiet(batch_size=4))
        assert len(index) == 20
    assert resumed.tiles == 12
    assert summary.images_finished_before == 8
    again = CountingEncoder()
    with ArchiveIndex.open(tmp_path / "index") as index:
        summary = index_archive(archive, index, again, quiet(batch_size=4))
    assert again.tiles == 0 and summary.images_finished_before == 20


def test_a_copy_of_an_indexed_file_is_a_duplicate(tmp_path):
    archive = kather_archive(tmp_path, 3)
    twin = tmp_path / "twin.tif"
    shutil.copyfile(archive[0].path, twin)
    with new_index(tmp_path / "index") as index:
        index_archive(archive, index, CountingEncoder(), quiet())
        summary = index_archive(
            [ArchiveImage(twin, None, "twin", "kather")], index, CountingEncoder(), quiet()
        )
        assert summary.duplicate_files == 1 and len(index) == 3


def test_large_images_keep_only_tissue_tiles_with_their_positions(tmp_path):
    slide = large_slide(tmp_path)
    config = quiet(tiling=TilingConfig(tile_size=150, min_tissue=0.5))
    with new_index(tmp_path / "index") as index:
        summary = index_archive([slide], index, CountingEncoder(), config)
        records = [index.get(i) for i in range(1, len(index) + 1)]
        tiles = [record.tile for record in records if record is not None and record.tile]
    assert summary.tiles_background == 4 and summary.tiles_added == 4
    assert len(tiles) == 4 and all(x < 300 for x, _, _, _ in tiles)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from tests.indexer.ingest.test_pipeline import CountingEncoder, quiet
from indexer.ingest.sources import load_folder
from indexer.index.store import ArchiveIndex
from indexer.ingest.pipeline import index_archive

class DyingEncoder(CountingEncoder):
    def __call__(self, images):
        if self.batches == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close: a power cut
        return super().__call__(images)

index = ArchiveIndex.open(Path(sys.argv[1]))
index_archive(load_folder(Path(sys.argv[2])), index, DyingEncoder(), quiet(batch_size=4))
"""


def test_a_killed_run_loses_no_acknowledged_tile_and_resumes(tmp_path):
    archive = kather_archive(tmp_path, 16)
    new_index(tmp_path / "index").close()
    repo = Path(__file__).resolve().parents[3]
    child = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path / "index"), str(tmp_path / "archive")],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL
    resumed = CountingEncoder()
    with ArchiveIndex.open(tmp_path / "index") as index:
        assert len(index) == 8  # replayed from SQLite: the snapshot on disk is still empty
        index_archive(archive, index, resumed, quiet(batch_size=4))
        assert len(index) == 16
    assert resumed.tiles == 8
