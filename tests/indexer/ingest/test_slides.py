"""Slides as an archive source, on real pyramidal TIFFs read by real OpenSlide.

The slides are mosaics of real Kather 2016 H&E tiles on glass, written by tifffile at 0.25 um/px
with one cell = 300 level-0 px = one 150 px tile at 0.5 um/px, so every expected tile position
and its pixels are known independently of the code under test.
"""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from indexer.index.slides import SlideRegistry
from indexer.index.thumbnails import make_thumbnail
from indexer.index.tiling import TilingConfig
from indexer.ingest.slides import (
    SlideConfig,
    SlideError,
    index_slides,
    load_slides,
    open_slide,
    plan_tiles,
    slide_resolution,
)
from indexer.ingest.sources import ArchiveImage
from support.slide_samples import Mosaic, checkerboard_mosaic, write_mosaic_slide
from tests.indexer.index_helpers import DIM, new_index

CELL = 300
COLS, ROWS = 10, 8
TISSUE_CELLS = [(c, r) for r in range(ROWS) for c in range(COLS) if (c + 2 * r) % 3 == 0]
PROJECTION = np.random.default_rng(0).standard_normal((8 * 8 * 3, DIM)).astype(np.float32)


class ProjectionEncoder:
    """A cheap deterministic stand-in for the network that counts what it embeds."""

    def __init__(self) -> None:
        self.tiles = 0

    def __call__(self, images):
        self.tiles += len(images)
        pixels = np.stack([np.asarray(i.resize((8, 8)), dtype=np.float32).ravel() for i in images])
        return (pixels / 255.0 - 0.5) @ PROJECTION


def config(**options) -> SlideConfig:
    return SlideConfig(
        **{"mpp": 0.5, "tiling": TilingConfig(150), "batch_size": 4, "progress": False, **options}
    )


@pytest.fixture(scope="module")
def mosaic() -> Mosaic:
    return checkerboard_mosaic(COLS * CELL, ROWS * CELL, CELL, TISSUE_CELLS)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, mosaic):
    folder = tmp_path_factory.mktemp("slides")
    (folder / "TUMOR").mkdir()
    write_mosaic_slide(folder / "TUMOR" / "slide-a.tif", mosaic, 0.25)
    return folder


def archive_copy(slides: Path, tmp_path: Path) -> Path:
    target = tmp_path / "archive"
    shutil.copytree(slides, target)
    return target


def test_tissue_mask_keeps_exactly_the_tissue_cells_and_never_reads_glass(slides):
    path = slides / "TUMOR" / "slide-a.tif"
    slide = open_slide(path)
    plan = plan_tiles(slide, slide_resolution(slide, path, None), config())
    assert plan.level == 1 and plan.level_downsample == 2.0
    assert plan.side == (CELL, CELL) and plan.read_size == (150, 150)
    kept = sorted((x // CELL, y // CELL) for x, y, _, _ in plan.boxes)
    assert kept == sorted(TISSUE_CELLS)
    assert plan.background == COLS * ROWS - len(TISSUE_CELLS)


def test_a_slide_without_reduced_levels_is_tiled_alike_from_level_zero(mosaic, tmp_path):
    path = write_mosaic_slide(tmp_path / "flat.tif", mosaic, 0.25, max_levels=1)
    slide = open_slide(path)
    assert slide.level_count == 1
    plan = plan_tiles(slide, slide_resolution(slide, path, None), config())
    assert plan.level == 0 and plan.read_size == (CELL, CELL)
    assert sorted((x // CELL, y // CELL) for x, y, _, _ in plan.boxes) == sorted(TISSUE_CELLS)


def test_tiles_at_half_micron_from_a_quarter_micron_slide_match_their_stored_coordinates(
    slides, mosaic, tmp_path
):
    with new_index(tmp_path / "index") as index:
        encoder = ProjectionEncoder()
        summary = index_slides(load_slides(slides), index, encoder, config())
        assert summary.tiles_added == len(TISSUE_CELLS) == encoder.tiles == len(index)
        records = [index.get(item_id) for item_id in range(1, len(index) + 1)]
    slide = openslide.OpenSlide(str(slides / "TUMOR" / "slide-a.tif"))
    for record in records:
        assert record is not None
        assert record.tile is not None
        x, y, width, height = record.tile
        assert (width, height) == (CELL, CELL) and x % CELL == 0 and y % CELL == 0
        assert record.source_size == (COLS * CELL, ROWS * CELL)
        assert record.label == "TUMOR" and record.group == "slide-a"
        assert record.extra["mpp"] == 0.5 and record.extra["slide_mpp"] == 0.25
        assert record.extra["level"] == 1 and record.extra["tile_px"] == 150
        # Re-read the stored box from level 0 and scale it to 0.5 um/px: the same thumbnail.
        region = slide.read_region((x, y), 0, (width, height)).convert("RGB").resize((150, 150))
        reread = thumbnail_pixels(make_thumbnail(region))
        stored = thumbnail_pixels(record.thumbnail)
        # The independent reference: the Kather tile laid at that cell when the slide was made.
        laid = thumbnail_pixels(make_thumbnail(mosaic.tissue[(x // CELL, y // CELL)]))
        assert np.abs(reread - stored).mean() < 4.0
        assert np.abs(laid - stored).mean() < 8.0
        neighbour = next(cell for cell in TISSUE_CELLS if cell != (x // CELL, y // CELL))
        other = thumbnail_pixels(make_thumbnail(mosaic.tissue[neighbour]))
        assert np.abs(other - stored).mean() > 2 * np.abs(laid - stored).mean()


def thumbnail_pixels(jpeg: bytes | None) -> np.ndarray:
    assert jpeg is not None
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


def test_slide_registry_records_dimensions_mpp_vendor_and_tile_count(slides, tmp_path):
    with new_index(tmp_path / "index") as index:
        index_slides(load_slides(slides), index, ProjectionEncoder(), config(), slides)
        with SlideRegistry(index.directory) as registry:
            (record,) = registry.all()
        item = index.get(1)
    assert item is not None and item.extra["slide_id"] == record.slide_id
    assert (record.width, record.height) == (COLS * CELL, ROWS * CELL)
    assert record.mpp_x == record.mpp_y == 0.25
    assert record.vendor == "generic-tiff"
    assert record.tiles == len(TISSUE_CELLS)
    assert record.level_dimensions[1] == (COLS * CELL // 2, ROWS * CELL // 2)
    assert record.label == "TUMOR"
    # As for images, no machine path: the slide's path in the archive folder, and its name.
    assert (record.archive, record.source) == (slides.name, "TUMOR/slide-a.tif")
    assert (item.archive, item.source) == (slides.name, "TUMOR/slide-a.tif")


def test_a_slide_without_mpp_is_refused_naming_slide_mpp_and_indexed_when_stated(mosaic, tmp_path):
    path = write_mosaic_slide(tmp_path / "no-mpp.tif", mosaic, None)
    slide = open_slide(path)
    assert "openslide.mpp-x" not in slide.properties
    with pytest.raises(SlideError, match="--slide-mpp"):
        slide_resolution(slide, path, None)
    archive = [ArchiveImage(path, None, "no-mpp", "test")]
    with new_index(tmp_path / "index") as index:
        refused = index_slides(archive, index, ProjectionEncoder(), config())
        assert len(index) == 0 and "--slide-mpp" in refused.unreadable[0][1]
        stated = index_slides(archive, index, ProjectionEncoder(), config(slide_mpp=0.25))
        assert stated.tiles_added == len(TISSUE_CELLS) == len(index)


def test_unreadable_and_truncated_slides_are_reported_and_skipped_without_stopping_the_run(
    slides, tmp_path
):
    archive = archive_copy(slides, tmp_path)
    good = archive / "TUMOR" / "slide-a.tif"
    truncated = archive / "truncated.tif"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (archive / "garbage.svs").write_bytes(b"II*\x00 this is no slide at all" * 10)
    (archive / "empty.ndpi").write_bytes(b"")
    damaged_slide(archive / "damaged.tif")
    images = load_slides(archive)
    assert {image.path.name for image in images} == {
        "slide-a.tif",
        "truncated.tif",
        "garbage.svs",
        "empty.ndpi",
        "damaged.tif",
    }
    with new_index(tmp_path / "index") as index:
        summary = index_slides(images, index, ProjectionEncoder(), config(), archive)
        assert index.journal.finished_source("archive/TUMOR/slide-a.tif") is not None
        assert index.journal.finished_source("archive/truncated.tif") is None
        assert index.journal.finished_source("archive/damaged.tif") is None
        stored = len(index)
    reasons = {Path(path).name: reason for path, reason in summary.unreadable}
    assert sorted(reasons) == ["damaged.tif", "empty.ndpi", "garbage.svs", "truncated.tif"]
    assert "JPEG" in reasons["damaged.tif"] and "OpenSlide cannot read" in reasons["garbage.svs"]
    # The tiles of the damaged slide read before the broken one stay; the good slide is whole.
    assert len(TISSUE_CELLS) < stored < len(TISSUE_CELLS) + len(OTHER_CELLS)
    assert summary.images == 5 and summary.tiles_added == stored


OTHER_CELLS = [(c, r) for r in range(ROWS) for c in range(COLS) if (c + r) % 2 == 0]


def damaged_slide(path: Path) -> Path:
    """A slide that opens but whose level-1 tile in the middle holds zeros past its first third."""
    write_mosaic_slide(path, checkerboard_mosaic(COLS * CELL, ROWS * CELL, CELL, OTHER_CELLS), 0.25)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[1]
        middle = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[middle], page.databytecounts[middle]
    data = bytearray(path.read_bytes())
    data[offset + count // 3 : offset + count] = bytes(count - count // 3)
    path.write_bytes(bytes(data))
    return path


def test_finished_slides_are_skipped_and_a_copy_is_recognised_as_a_duplicate(slides, tmp_path):
    archive = archive_copy(slides, tmp_path)
    shutil.copyfile(archive / "TUMOR" / "slide-a.tif", archive / "TUMOR" / "slide-a-copy.tif")
    images = load_slides(archive)
    with new_index(tmp_path / "index") as index:
        first = index_slides(images[:1], index, ProjectionEncoder(), config())
        encoder = ProjectionEncoder()
        second = index_slides(images, index, encoder, config())
        assert len(index) == first.tiles_added == len(TISSUE_CELLS)
    assert second.images_finished_before == 1 and second.duplicate_files == 1
    assert encoder.tiles == 0


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from indexer.index.store import ArchiveIndex
from indexer.ingest.slides import index_slides, load_slides
from tests.indexer.ingest.test_slides import ProjectionEncoder, config

class DiesMidSlide(ProjectionEncoder):
    def __call__(self, images):
        if self.tiles >= int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(images)

index = ArchiveIndex.open(Path(sys.argv[2]))
index_slides(load_slides(Path(sys.argv[1])), index, DiesMidSlide(), config(), Path(sys.argv[1]))
"""


def test_resuming_after_a_kill_mid_slide_re_encodes_nothing_already_stored(slides, tmp_path):
    index_dir = tmp_path / "index"
    new_index(index_dir).close()
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(slides), str(index_dir), "12"],
        env=environment,
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    from indexer.index.store import ArchiveIndex

    with ArchiveIndex.open(index_dir) as index:
        stored = len(index)
        # Three batches of 4 were encoded; the last one's write may still have been running in
        # the writer thread when the process was killed (writes overlap the next forward).
        assert stored in (8, 12)
        key = f"{slides.name}/TUMOR/slide-a.tif"
        assert index.journal.finished_source(key) is None
        encoder = ProjectionEncoder()
        summary = index_slides(load_slides(slides), index, encoder, config(), slides)
        assert encoder.tiles == len(TISSUE_CELLS) - stored
        assert summary.tiles_already_indexed == stored
        assert len(index) == len(TISSUE_CELLS)
        assert index.journal.finished_source(key) is not None


def test_a_manifest_of_slides_gives_labels_and_groups(slides, tmp_path):
    manifest = tmp_path / "slides.csv"
    path = slides / "TUMOR" / "slide-a.tif"
    manifest.write_text(f"path,label,group,stain\n{path},ADC,patient-7,HE\n")
    (image,) = load_slides(manifest)
    assert (image.label, image.group, image.extra) == ("ADC", "patient-7", {"stain": "HE"})
    with new_index(tmp_path / "index") as index:
        index_slides([image], index, ProjectionEncoder(), config())
        record = index.get(1)
    assert record is not None and record.group == "patient-7" and record.extra["stain"] == "HE"
