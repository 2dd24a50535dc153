"""POST /search with a region of an indexed slide (``slide_id``, ``x``, ``y``, ``width``,
``height``), on a live server.

The reference for every region is an upload of the same pixels, read by the test itself with
OpenSlide (the level the index's tiles come from, with that level's mpp): the two answers must be
the same. The index is `build_slide_index`'s (slides at 0.25 um/px, 150 px tiles at 0.5 um/px,
read from level 1), with codewords that give each tissue tile of slide-a its own code.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openslide
import pytest

from indexer.index.store import ArchiveIndex
from tests.service.conftest import LiveServer
from tests.service.slide_index import CELL, archive_roots, build_slide_index, tissue_cells

SLIDE_MPP = 0.25
INDEX_MPP = 0.5
LEVEL = 1  # downsample 2: 0.5 um/px
# Small enough that the whole 2400 x 1800 slide (1200 x 900 at level 1) is refused as too large.
MAX_PIXELS = 500_000


@pytest.fixture(scope="module")
def slide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    index_dir, slides = build_slide_index(
        tmp_path_factory.mktemp("slide-regions"), codewords_from_slide_a=True
    )
    with ArchiveIndex.open(index_dir) as index:
        records = [index.get(item_id) for item_id in range(1, len(index) + 1)]
    item_of_cell = {
        (record.tile[0] // CELL, record.tile[1] // CELL): record.id
        for record in records
        if record is not None and record.tile is not None and "slide-a" in record.source
    }
    slide_id = next(r.extra["slide_id"] for r in records if r and "slide-a" in r.source)
    env = {**archive_roots(index_dir), "HISTOSEARCH_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}
    server = LiveServer(index_dir, index_dir.parent / "server.log", env=env)
    server.start()
    try:
        yield server, slides["slide-a"], slide_id, item_of_cell
    finally:
        server.stop()


def read_by_hand(path: Path, box: tuple[int, int, int, int]) -> bytes:
    """The region as PNG, read with OpenSlide at level 1 (level-0 box halved)."""
    x, y, width, height = box
    region = openslide.OpenSlide(str(path)).read_region((x, y), LEVEL, (width // 2, height // 2))
    buffer = io.BytesIO()
    region.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def region_fields(slide_id: str, box: tuple[int, int, int, int], **more: str) -> dict[str, str]:
    x, y, width, height = box
    return {"slide_id": slide_id, "x": str(x), "y": str(y), "width": str(width),
            "height": str(height), **more}  # fmt: skip


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without its timings and the query's format (a slide region says "slide")."""
    slides = body["slides"]
    return {
        "results": [(r["id"], round(r["score"], 4)) for r in body["results"]],
        "slides": [(s["slide_id"], s["hit_count"], round(s["best_score"], 4)) for s in slides],
        "query": (body["query"]["width"], body["query"]["height"]),
        "tiles": (body["query_tiles"], body["tissue_tiles"]),
    }


@pytest.mark.parametrize(
    "box",
    [(0, 0, 1200, 600), (150, 300, 900, 450), (900, 0, CELL, CELL)],
    ids=["aligned-4x2-cells", "unaligned", "one-cell-click"],
)
def test_a_slide_region_answers_as_an_upload_of_the_same_pixels_read_with_openslide(
    slide_server, box
):
    server, path, slide_id, _ = slide_server
    with server.client() as client:
        by_region = client.post("/search", data=region_fields(slide_id, box, k="20"))
        by_upload = client.post(
            "/search",
            files={"image": ("region.png", read_by_hand(path, box))},
            data={"k": "20", "mpp": str(SLIDE_MPP * 2)},
        )
    assert by_region.status_code == 200, by_region.text
    assert by_upload.status_code == 200, by_upload.text
    assert comparable(by_region.json()) == comparable(by_upload.json())
    assert by_region.json()["query"]["format"] == "slide"


def test_a_region_of_four_by_two_cells_finds_its_three_tissue_tiles_first(slide_server):
    server, _, slide_id, item_of_cell = slide_server
    # Cells 0-3 by 0-1; tissue where (c + r) % 3 == 0: (0, 0), (3, 0), (2, 1).
    inside = [cell for cell in tissue_cells(0) if cell[0] < 4 and cell[1] < 2]
    assert inside == [(0, 0), (3, 0), (2, 1)]
    with server.client() as client:
        response = client.post("/search", data=region_fields(slide_id, (0, 0, 1200, 600), k="6"))
    body = response.json()
    assert body["query_tiles"] == 3 and body["tissue_tiles"] == 3
    # Each tile's own item scores M = 8; slide-b holds the same Kather tiles (its twins).
    top = body["results"][:6]
    assert {item_of_cell[cell] for cell in inside} <= {r["id"] for r in top}
    assert all(r["score"] == pytest.approx(8.0, abs=1e-4) for r in top)


def test_a_click_sized_region_over_one_indexed_tile_finds_that_tile(slide_server):
    server, _, slide_id, item_of_cell = slide_server
    with server.client() as client:
        response = client.post("/search", data=region_fields(slide_id, (900, 0, CELL, CELL)))
    body = response.json()
    assert body["query_tiles"] == 1
    assert item_of_cell[3, 0] in {r["id"] for r in body["results"][:2]}
    assert body["results"][0]["score"] == pytest.approx(8.0, abs=1e-4)


@pytest.mark.parametrize(
    "box",
    [(300, 0, 600, 300), (300, 0, CELL, CELL), (330, 30, 100, 100)],
    ids=["two-tiles", "one-tile-a-click", "under-a-tile"],
)
def test_a_region_over_glass_only_is_refused_as_having_no_tissue(slide_server, box):
    server, _, slide_id, _ = slide_server
    with server.client() as client:
        # Cells (1, 0) and (2, 0) of slide-a are glass (a cell is one 150 px tile at 0.5 um/px).
        response = client.post("/search", data=region_fields(slide_id, box))
    assert response.status_code == 422
    assert response.json()["code"] == "no_tissue"
    assert "glass" in response.json()["detail"]


@pytest.mark.parametrize(
    "box",
    [(2000, 0, 401, 300), (0, 1700, 300, 101), (2400, 1800, 1, 1)],
    ids=["past-the-right-edge", "past-the-bottom", "origin-outside"],
)
def test_a_region_outside_the_slide_is_a_422_naming_the_slide_size(slide_server, box):
    server, _, slide_id, _ = slide_server
    with server.client() as client:
        response = client.post("/search", data=region_fields(slide_id, box))
        assert client.get("/health").status_code == 200
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "region_outside_slide"
    assert "2400 x 1800 level-0 pixels" in response.json()["detail"]


def test_a_region_too_large_to_read_is_a_422_naming_the_limit(slide_server):
    server, _, slide_id, _ = slide_server
    with server.client() as client:
        response = client.post("/search", data=region_fields(slide_id, (0, 0, 2400, 1800)))
    assert response.status_code == 422
    assert response.json()["code"] == "region_too_large"
    assert "1200 x 900 pixels at 0.5 um/px" in response.json()["detail"]
    assert "HISTOSEARCH_MAX_IMAGE_PIXELS" in response.json()["detail"]


def test_an_unknown_slide_is_a_404_and_an_incomplete_region_a_422(slide_server):
    server, _, slide_id, _ = slide_server
    with server.client() as client:
        unknown = client.post("/search", data=region_fields("ffffffffffffffff", (0, 0, 300, 300)))
        partial = client.post("/search", data={"slide_id": slide_id, "x": "0", "y": "0"})
        negative = client.post("/search", data=region_fields(slide_id, (-1, 0, 300, 300)))
        empty = client.post("/search", data=region_fields(slide_id, (0, 0, 0, 300)))
        path = client.post("/search", data=region_fields("../etc/passwd", (0, 0, 300, 300)))
    assert unknown.status_code == 404 and "no slide with id" in unknown.json()["detail"]
    assert partial.status_code == 422 and partial.json()["code"] == "invalid_request"
    assert "x, y, width and height" in partial.json()["detail"]
    assert negative.status_code == 422 and empty.status_code == 422
    assert path.status_code == 422


def test_a_region_comes_alone_not_with_an_image_or_an_mpp(slide_server):
    server, path, slide_id, _ = slide_server
    box = (0, 0, 600, 600)
    with server.client() as client:
        with_image = client.post(
            "/search",
            files={"image": ("q.png", read_by_hand(path, box))},
            data=region_fields(slide_id, box),
        )
        with_mpp = client.post("/search", data=region_fields(slide_id, box, mpp="0.25"))
    for response in (with_image, with_mpp):
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_request"
        assert "searched alone" in response.json()["detail"]


def test_regions_are_cut_into_tiles_of_the_index_not_of_the_view(slide_server):
    server, _, slide_id, _ = slide_server
    # 1200 x 1200 level-0 px = 600 x 600 at the index's 0.5 um/px: 4 x 4 tiles of 150 px.
    with server.client() as client:
        body = client.post("/search", data=region_fields(slide_id, (0, 0, 1200, 1200))).json()
    assert (body["query"]["width"], body["query"]["height"]) == (600, 600)
    # Tissue cells of slide-a inside columns and rows 0-3: (c + r) % 3 == 0.
    assert body["tissue_tiles"] == sum(1 for c, r in tissue_cells(0) if c < 4 and r < 4)
