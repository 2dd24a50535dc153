"""The search engine's answers: the uploaded image itself first, and no paths of this machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.index.hashing import file_hash
from indexer.index.store import ArchiveIndex, NewItem
from indexer.index.thumbnails import make_thumbnail
from model import Embedder, build_model, load_checkpoint, save_checkpoint
from tests.service import samples
from tests.service.conftest import API_KEY, SMALL_CARD
from tests.service.test_api import make_client

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TIES = 150


def descriptor_of(index_dir: Path, image: Image.Image) -> np.ndarray:
    """The query descriptor the service computes for this image (same model, same rule)."""
    model = load_checkpoint(index_dir / "model.pt", map_location=torch.device("cpu"))
    return Embedder(model, torch.device("cpu")).embed([image])


def item(source: str, image: Image.Image, salt: str, **fields: object) -> NewItem:
    return NewItem(
        source=source,
        content_hash=file_hash(salt.encode()),
        thumbnail=make_thumbnail(image),
        **fields,  # type: ignore[arg-type]
    )


def test_the_uploaded_image_comes_first_even_behind_more_than_k_ties(index_copy: Path) -> None:
    """150 older items share the image's code, so all tie at its score and come before it in id
    order; the archive's own copy of the file must still be the first hit."""
    image = samples.tile_rgb(9).transpose(Image.Transpose.ROTATE_270)
    data = samples.encode(image, "PNG")
    descriptor = descriptor_of(index_copy, image)
    with ArchiveIndex.open(index_copy) as index:
        twins = [item(f"twin/{n}.png", image, f"twin-{n}", label="twin") for n in range(TIES)]
        index.add(np.repeat(descriptor, TIES, axis=0), twins)
        index.flush()
    with make_client(index_copy) as client:
        added = client.post("/index", files={"images": ("copy.png", data)}, headers=AUTH)
        assert added.status_code == 201, added.text
        copy_id = added.json()["items"][0]["id"]
        hits = client.post("/search", files={"image": ("q.png", data)}, data={"k": 10}).json()
        results = hits["results"]
        assert [hit["id"] for hit in results][:1] == [copy_id]
        assert results[0]["exact_copy"] is True
        assert not any(hit["exact_copy"] for hit in results[1:])
        # It ties with the twins: the same code, the same exact score.
        assert results[0]["score"] == pytest.approx(results[1]["score"], abs=1e-5)
        assert len(results) == 10 and len({hit["id"] for hit in results}) == 10

        # Filters still hold: a filter the copy fails leaves it out.
        twins_only = client.post(
            "/search", files={"image": ("q.png", data)}, data={"k": 5, "label": "twin"}
        ).json()["results"]
        assert copy_id not in {hit["id"] for hit in twins_only}
        assert not any(hit["exact_copy"] for hit in twins_only)


def test_a_similar_but_different_file_is_not_an_exact_copy(index_copy: Path) -> None:
    image = samples.tile_rgb(9)
    with make_client(index_copy) as client:
        client.post(
            "/index", files={"images": ("a.png", samples.encode(image, "PNG"))}, headers=AUTH
        )
        # The same pixels in another file: another content hash.
        other = samples.encode(image, "BMP")
        results = client.post("/search", files={"image": ("q.bmp", other)}).json()["results"]
        assert not any(hit["exact_copy"] for hit in results)


def test_absolute_sources_are_shown_by_their_file_name(index_copy: Path) -> None:
    image = samples.tile_rgb(21).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sources = {
        "/home/alice/archive/slide-7/tile-3.png": "tile-3.png",
        "C:\\Archive\\slide-8\\tile-4.png": "tile-4.png",
        "\\\\share\\path\\tile-5.png": "tile-5.png",
        "slide-9/tile-6.png": "slide-9/tile-6.png",  # relative to the archive: kept
    }
    with ArchiveIndex.open(index_copy) as index:
        base = descriptor_of(index_copy, image)
        rng = np.random.default_rng(0)
        descriptors = base + rng.normal(0, 1e-3, (len(sources), base.shape[1])).astype(np.float32)
        outcomes = index.add(
            descriptors,
            [item(source, image, source, label="paths") for source in sources],
        )
        index.flush()
    ids = [outcome.id for outcome in outcomes]
    with make_client(index_copy) as client:
        for item_id, shown in zip(ids, sources.values(), strict=True):
            assert client.get(f"/images/{item_id}").json()["source"] == shown
        query = samples.encode(image, "PNG")
        hits = client.post(
            "/search", files={"image": ("q.png", query)}, data={"k": 4, "label": "paths"}
        ).json()["results"]
        assert {hit["source"] for hit in hits} == set(sources.values())


def test_the_served_model_card_names_its_runs_without_their_paths(tmp_path: Path) -> None:
    training = {
        "data": "/home/alice/archives/bracs/labels.csv",
        "out": "runs/bracs-2026",
        "backbone_weights": "C:\\weights\\resnet18.pth",
        "epochs": 3,
        "validation_groups": ["BRACS_1003", "BRACS_1010"],
    }
    card = SMALL_CARD.model_copy(update={"training": training})
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(build_model(card).eval(), checkpoint)
    index_dir = tmp_path / "index"
    image = samples.tile_rgb(0)
    with ArchiveIndex.create(index_dir, checkpoint) as index:
        model = load_checkpoint(checkpoint, map_location=torch.device("cpu"))
        index.add(Embedder(model, torch.device("cpu")).embed([image]), [item("a", image, "a")])
        index.flush()
    with make_client(index_dir) as client:
        served = client.get("/stats").json()["model_card"]["training"]
    assert served["data"] == "labels.csv"
    assert served["out"] == "bracs-2026"
    assert served["backbone_weights"] == "resnet18.pth"
    assert served["epochs"] == 3 and served["validation_groups"] == ["BRACS_1003", "BRACS_1010"]
    assert "alice" not in json.dumps(served) and "/" not in json.dumps(served)


@pytest.mark.parametrize(
    ("source", "archive", "shown"),
    [
        ("/home/alice/archive/slide-7/tile-3.png", None, "tile-3.png"),
        ("slide-7/tile-3.png", "kather", "kather/slide-7/tile-3.png"),
    ],
    ids=["absolute", "relative"],
)
def test_an_item_search_whose_source_is_gone_is_a_404_without_a_stored_path(
    index_copy: Path, tmp_path: Path, source: str, archive: str | None, shown: str
) -> None:
    image = samples.tile_rgb(4)
    with ArchiveIndex.open(index_copy) as index:
        (outcome,) = index.add(
            descriptor_of(index_copy, image),
            [item(source, image, f"gone-{source}", archive=archive)],
        )
    with make_client(index_copy, archive_roots=[tmp_path]) as client:
        listed = client.get(f"/images/{outcome.id}").json()["source"]
        response = client.post("/search", data={"item_id": str(outcome.id)})
    assert listed == shown
    assert response.status_code == 404, response.text
    assert shown in response.json()["detail"]
    assert "/home/alice" not in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"]


def test_an_item_search_whose_source_is_unreadable_names_no_path_of_this_machine(
    index_copy: Path, tmp_path: Path
) -> None:
    image = samples.tile_rgb(5)
    (tmp_path / "kather").mkdir()
    (tmp_path / "kather" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with ArchiveIndex.open(index_copy) as index:
        (outcome,) = index.add(
            descriptor_of(index_copy, image),
            [item("broken.png", image, "broken", archive="kather")],
        )
    with make_client(index_copy, archive_roots=[tmp_path]) as client:
        response = client.post("/search", data={"item_id": str(outcome.id)})
    assert response.status_code == 404, response.text
    assert str(tmp_path) not in response.json()["detail"]
    assert "no longer readable" in response.json()["detail"]
