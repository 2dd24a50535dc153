"""A file indexed from disk and the same file uploaded: identical pixels, hash and thumbnail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from indexer.index.store import ArchiveIndex
from indexer.index.thumbnails import make_thumbnail
from indexer.ingest.pipeline import (
    PipelineConfig,
    decode_image,
    index_archive,
    read_image,
)
from indexer.ingest.sources import ArchiveImage
from model import Embedder, load_checkpoint
from service.app import create_app
from service.imaging import decode_upload
from service.settings import Settings
from tests.service import samples
from tests.service.conftest import API_KEY

LIMIT = 40_000_000


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """A non-square crop stored a quarter-turn left, with EXIF orientation 6 to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = image.crop((0, 0, 150, 100)).transpose(Image.Transpose.ROTATE_90)
    return samples.encode(stored, "JPEG", quality=95, exif=exif)


def palette_with_transparency(image: Image.Image) -> bytes:
    palette = image.convert("P")
    return samples.encode(palette, "PNG", transparency=0)


BODIES: dict[str, Callable[[Image.Image], bytes]] = {
    "gray16.png": samples.png_gray16,
    "rgb16.png": samples.png_rgb16,
    "rotated.jpeg": exif_rotated_jpeg,
    "cmyk.jpeg": lambda image: samples.encode(image.convert("CMYK"), "JPEG", quality=95),
    "half-transparent.png": samples.rgba_half_transparent,
    "palette.png": palette_with_transparency,
    "gray.tif": lambda image: samples.encode(image.convert("L"), "TIFF"),
}


def from_disk(path: Path) -> Image.Image:
    return decode_image(read_image(ArchiveImage(path, None, path.stem, "disk")))


@pytest.mark.parametrize("name", sorted(BODIES))
def test_indexer_and_upload_decode_give_identical_pixels(name: str, tmp_path: Path) -> None:
    data = BODIES[name](samples.tile_rgb(5))
    path = tmp_path / name
    path.write_bytes(data)
    disk = from_disk(path)
    upload = decode_upload(data, max_pixels=LIMIT, filename=name).rgb
    assert disk.mode == upload.mode == "RGB"
    assert disk.size == upload.size
    assert np.array_equal(np.asarray(disk), np.asarray(upload))
    assert make_thumbnail(disk) == make_thumbnail(upload)


def test_sixteen_bit_png_gives_identical_pixels_on_both_paths(tmp_path: Path) -> None:
    # Values across the whole 16-bit range, none a multiple of 257: rounding must agree too.
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65_536, (64, 96), dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    disk = np.asarray(from_disk(path))
    upload = np.asarray(decode_upload(path.read_bytes(), max_pixels=LIMIT).rgb)
    assert disk.shape == upload.shape == (64, 96, 3)
    assert np.array_equal(disk, upload)
    assert np.array_equal(disk[..., 0], np.rint(values / 257.0).astype(np.uint8))


def test_a_file_indexed_from_disk_is_a_duplicate_when_uploaded(
    index_copy: Path, tmp_path: Path
) -> None:
    tile = samples.tile_rgb(7)
    files = {
        "rotated.jpeg": exif_rotated_jpeg(tile),
        "gray16.png": samples.png_gray16(tile),
    }
    archive = []
    for name, data in files.items():
        path = tmp_path / "archive" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        archive.append(ArchiveImage(path, "parity", name, "disk"))
    with ArchiveIndex.open(index_copy) as index:
        assert index.checkpoint_path is not None
        model = load_checkpoint(index.checkpoint_path)
        encoder = Embedder(model, torch.device("cpu"))
        summary = index_archive(archive, index, encoder, PipelineConfig(progress=False))
        assert summary.tiles_added == 2 and not summary.unreadable
        records = [index.get(item_id) for item_id in range(1, len(index) + 1)]
        disk_ids = {
            Path(record.source).name: record.id
            for record in records
            if record is not None and record.dataset == "disk"
        }
        disk_thumbnails = {name: index.thumbnail(item) for name, item in disk_ids.items()}
    assert set(disk_ids) == set(files)

    settings = Settings(index_dir=index_copy, api_key=SecretStr(API_KEY), workers=1, device="cpu")
    with TestClient(create_app(settings)) as client:
        for name, data in files.items():
            response = client.post(
                "/index",
                files={"images": (name, data)},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert response.status_code == 200, response.text
            [item] = response.json()["items"]
            assert item["status"] == "duplicate"
            assert item["id"] == disk_ids[name]
            thumbnail = client.get(f"/images/{item['id']}/thumbnail").content
            assert thumbnail == disk_thumbnails[name]
        rotated = client.get(f"/images/{disk_ids['rotated.jpeg']}").json()
        assert rotated["source_size"] == {"width": 150, "height": 100}
