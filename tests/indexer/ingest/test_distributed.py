"""Encoding on a real local Ray cluster gives the single-process run's items, codes and ids."""

import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.index.protocol import Index
from indexer.index.shards import ShardedIndex
from indexer.index.store import ArchiveIndex, ItemRecord
from indexer.index.tiling import TilingConfig
from indexer.ingest.distributed import (
    RayEncodingConfig,
    encode_archive_on_ray,
    plan_actors,
)
from indexer.ingest.pipeline import IndexingSummary, PipelineConfig, index_archive
from indexer.ingest.sources import ArchiveImage
from model import Embedder, ModelCard, build_model, load_checkpoint, save_checkpoint
from tests.indexer.ingest.test_pipeline import kather_archive, large_slide

CONFIG = PipelineConfig(tiling=TilingConfig(tile_size=150, min_tissue=0.5), batch_size=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(build_model(ModelCard(input_size=32)), path)
    return path


@pytest.fixture
def archive(tmp_path) -> list[ArchiveImage]:
    """Ten Kather tiles in four groups, a slide cut into tiles, and one unreadable file."""
    images = kather_archive(tmp_path, 10)
    broken = tmp_path / "archive" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return [*images, large_slide(tmp_path), ArchiveImage(broken, None, "broken", "kather")]


def single_process_index(directory: Path, checkpoint: Path, archive: list[ArchiveImage]):
    index = ArchiveIndex.create(directory, checkpoint)
    embedder = Embedder(load_checkpoint(checkpoint), torch.device("cpu"))
    summary = index_archive(archive, index, embedder, replace(CONFIG, progress=False))
    return index, summary


def contents(index: Index) -> dict[int, tuple[ItemRecord, list[int]]]:
    """Every stored item by id: its record (without the time it was added) and its code."""
    ids = [hit.id for hit in index.search(np.ones((1, index.descriptor_dim)), 1000)[0]]
    shards = index.shards if isinstance(index, ShardedIndex) else [index]
    assert all(isinstance(shard, ArchiveIndex) for shard in shards)
    found = {}
    for item_id in ids:
        record = index.get(item_id)
        assert record is not None
        codes = [
            shard.codes_of([item_id])[0]
            for shard in shards
            if isinstance(shard, ArchiveIndex) and shard.get(item_id)
        ]
        found[item_id] = (replace(record, added_at=0.0), codes[0].tolist())
    return found


def counts(summary: IndexingSummary) -> dict[str, object]:
    """The run's counts; unreadable files by path (their messages name memory addresses)."""
    found = asdict(summary)
    del found["seconds"]
    found["unreadable"] = [path for path, _ in summary.unreadable]
    return found


@pytest.mark.ray
def test_ray_encoding_into_shards_equals_the_single_process_run(
    tmp_path, ray_cluster, checkpoint, archive
):
    single, single_summary = single_process_index(tmp_path / "single", checkpoint, archive)
    with single, ShardedIndex.create(tmp_path / "sharded", checkpoint, 3) as sharded:
        summary = encode_archive_on_ray(
            archive, sharded, checkpoint, replace(CONFIG, progress=False), RayEncodingConfig()
        )
        assert counts(summary) == counts(single_summary)
        assert summary.tiles_added == 14 and summary.tiles_background == 4
        assert [Path(path).name for path, _ in summary.unreadable] == ["broken.png"]
        expected = contents(single)
        assert len(expected) == 14
        assert contents(sharded) == expected
        assert sum(len(shard) > 0 for shard in sharded.shards) >= 2


@pytest.mark.ray
def test_a_ray_run_resumes_skipping_finished_images_and_duplicate_files(
    tmp_path, ray_cluster, checkpoint, archive
):
    with ArchiveIndex.create(tmp_path / "index", checkpoint) as index:
        quiet = replace(CONFIG, progress=False)
        # Sources are named relative to one archive folder in both runs, as `histosearch index`
        # names them (the folder holding every image here: the slide lies beside the archive).
        root = tmp_path
        encode_archive_on_ray(archive[:6], index, checkpoint, quiet, archive_root=root)
        twin = tmp_path / "archive" / "twin.tif"
        shutil.copyfile(archive[0].path, twin)
        again = [*archive, ArchiveImage(twin, None, "elsewhere", "kather")]
        summary = encode_archive_on_ray(again, index, checkpoint, quiet, archive_root=root)
        assert summary.images_finished_before == 6
        assert summary.duplicate_files == 1
        assert summary.tiles_added == 14 - 6 and len(index) == 14


def test_the_embedding_pool_fits_the_cluster():
    two_cpus = plan_actors(RayEncodingConfig(), {"CPU": 2.0})
    assert (two_cpus.actors, two_cpus.gpus_per_actor, two_cpus.device) == (1, 0.0, "cpu")
    assert two_cpus.cpus_per_actor <= 1.5  # room left for the tiling tasks
    gpus = plan_actors(RayEncodingConfig(), {"CPU": 32.0, "GPU": 4.0})
    assert (gpus.actors, gpus.gpus_per_actor, gpus.device) == (4, 1.0, "cuda")
    assert plan_actors(RayEncodingConfig(actors=2), {"CPU": 16.0}).cpus_per_actor == 7.75


def test_each_embedding_actor_fits_on_one_node_of_the_cluster():
    four_small_nodes = plan_actors(RayEncodingConfig(), {"CPU": 8.0}, [2.0, 2.0, 2.0, 2.0])
    assert four_small_nodes.actors == 2 and four_small_nodes.cpus_per_actor == 1.5
    asked_too_many = plan_actors(RayEncodingConfig(actors=6), {"CPU": 8.0}, [2.0] * 4)
    # Only one actor of 1.25 CPUs fits on a 2-CPU node: four, not six that would never start.
    assert asked_too_many.actors == 4 and asked_too_many.cpus_per_actor == 1.25
    assert asked_too_many.actors * asked_too_many.cpus_per_actor <= 8.0 - 0.5


def test_nothing_of_ray_is_imported_unless_asked_for(tmp_path):
    """Every module of indexer/ and service/ imports, and sharded and unsharded searches run,
    without loading ray: the single-machine path does not need the `ray` extra."""
    script = f"""
import importlib, pkgutil, sys
from pathlib import Path
import indexer, service
for package in (indexer, service):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
from indexer.index.shards import ShardedIndex
from tests.indexer.index_helpers import descriptors_near_codewords, items, new_index, unit_codebooks
with new_index(Path({str(tmp_path)!r}) / "one") as one:
    one.add(descriptors_near_codewords(50, one.codebooks), items(50))
    assert len(one.search(descriptors_near_codewords(2, one.codebooks), 5)[0]) == 5
with ShardedIndex.create_from_codebooks(
    Path({str(tmp_path)!r}) / "many", unit_codebooks(), card={{}}, shard_count=2
) as many:
    many.add(descriptors_near_codewords(50, many.codebooks), items(50))
    assert len(many.search(descriptors_near_codewords(2, many.codebooks), 5)[0]) == 5
loaded = sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))
assert not loaded, loaded
"""
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.ray
def test_slides_embedded_on_ray_into_shards_search_as_the_single_process_index(
    tmp_path, ray_cluster, checkpoint
):
    """`histosearch index --source slides --ray auto --shards 3`: the slides' tiles are read here,
    embedded by the cluster's model actors, and written into three shards."""
    from indexer.cli import main
    from indexer.index.opening import open_index
    from support.slide_samples import checkerboard_mosaic, write_mosaic_slide

    tissue = 0
    for phase, name in enumerate(("slide-a", "slide-b")):
        cells = [(c, r) for r in range(3) for c in range(4) if (c + r + phase) % 2 == 0]
        tissue += len(cells)
        (tmp_path / "slides").mkdir(exist_ok=True)
        mosaic = checkerboard_mosaic(4 * 300, 3 * 300, 300, cells)
        write_mosaic_slide(tmp_path / "slides" / f"{name}.tif", mosaic, 0.25)
    argv = ["index", "--source", "slides", "--data", str(tmp_path / "slides"), "--no-progress"]
    argv += ["--checkpoint", str(checkpoint), "--tile-size", "150", "--batch-size", "4"]
    assert main([*argv, "--index", str(tmp_path / "single"), "--device", "cpu"]) == 0
    on_ray = ["--index", str(tmp_path / "ray"), "--ray", "auto", "--shards", "3"]
    assert main([*argv, *on_ray, "--ray-actors", "1"]) == 0
    device = torch.device("cpu")
    with (
        open_index(tmp_path / "single", device) as single,
        open_index(tmp_path / "ray", device) as sharded,
    ):
        assert isinstance(sharded.index, ShardedIndex) and len(sharded.index) == tissue
        assert contents(sharded.index) == contents(single.index)
