"""Region queries over HTTP, on a live server: an upload larger than one tile of the index.

The index is `build_slide_index`'s: two pyramidal TIFFs of real Kather 2016 tiles, tiled at
150 px and 0.5 um/px. Query tiles are re-read from the slides exactly as the indexer read them.
"""

import io
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from indexer.index.store import ArchiveIndex
from model import Embedder, load_checkpoint
from tests.service.conftest import LiveServer
from tests.service.slide_index import CELL, archive_roots, build_slide_index, slide_tile

TILE = 150
# Tissue cells of slide-a (column, row): (c + r) % 3 == 0 in `build_slide_index`.
MOSAIC_CELLS = [(0, 0), (3, 0), (2, 1), (5, 1)]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mosaic(tiles: list[Image.Image], columns: int, rows: int) -> Image.Image:
    """Tiles laid row by row on white glass, one per 150 px cell (cells beyond them stay glass)."""
    canvas = Image.new("RGB", (columns * TILE, rows * TILE), "white")
    for number, tile in enumerate(tiles):
        canvas.paste(tile, ((number % columns) * TILE, (number // columns) * TILE))
    return canvas


@pytest.fixture(scope="module")
def region_server(tmp_path_factory):
    index_dir, slides = build_slide_index(
        tmp_path_factory.mktemp("regions"), codewords_from_slide_a=True
    )
    tiles = [slide_tile(slides["slide-a"], cell) for cell in MOSAIC_CELLS]
    # The reference for a tile-sized query: the index searched in-process with the model's own
    # descriptor of the whole upload, before the server holds the index.
    with ArchiveIndex.open(index_dir) as index:
        assert index.checkpoint_path is not None
        embedder = Embedder(load_checkpoint(index.checkpoint_path), torch.device("cpu"))
        reference = [
            (hit.id, hit.score) for hit in index.search(embedder.embed([tiles[0]]), 100)[0]
        ]
        item_of_box = {
            (Path(record.source).stem, record.tile): record.id
            for record in (index.get(item_id) for item_id in range(1, len(index) + 1))
            if record is not None
        }
    server = LiveServer(index_dir, index_dir.parent / "server.log", env=archive_roots(index_dir))
    server.start()
    try:
        yield server, tiles, reference, item_of_box
    finally:
        server.stop()


def assert_found_at_the_top(results: list[dict[str, Any]], expected: set[int]) -> None:
    """Each query tile's own item scores M = 8 (its sub-vectors are codewords), the top score.

    slide-b holds the same Kather tiles as slide-a, so each has a twin at the same score: the
    eight best hits are the four tiles and their twins.
    """
    top = results[:8]
    assert expected <= {r["id"] for r in top}
    assert all(r["score"] == pytest.approx(8.0, abs=1e-4) for r in top)
    assert results[8]["score"] < 8.0 - 1e-4


def search(client, image: Image.Image, **fields: str) -> Any:
    response = client.post("/search", files={"image": ("q.png", png(image))}, data=fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_tile_sized_upload_is_searched_whole_as_before(region_server):
    server, tiles, reference, _ = region_server
    with server.client() as client:
        body = search(client, tiles[0], k="100")
    assert body["query_tiles"] == 1 and body["tissue_tiles"] == 1
    assert [(r["id"], r["score"]) for r in body["results"]] == [
        (item_id, pytest.approx(score, abs=1e-5)) for item_id, score in reference
    ]


def test_a_mosaic_of_four_archive_tiles_finds_them_with_four_query_tiles(region_server):
    server, tiles, _, item_of_box = region_server
    expected = {item_of_box["slide-a", (c * CELL, r * CELL, CELL, CELL)] for c, r in MOSAIC_CELLS}
    with server.client() as client:
        body = search(client, mosaic(tiles, 2, 2), k="10")
    assert body["query_tiles"] == 4 and body["tissue_tiles"] == 4
    assert body["query"]["width"] == 300 and body["query"]["height"] == 300
    assert_found_at_the_top(body["results"], expected)


def test_region_hits_are_each_items_best_score_over_the_query_tiles_then_tile_count(region_server):
    server, tiles, _, _ = region_server
    with server.client() as client:
        region = search(client, mosaic(tiles, 2, 2), k="100")
        per_tile = [search(client, tile, k="100")["results"] for tile in tiles]
    best: dict[int, float] = {}
    found_by: Counter[int] = Counter()
    for results in per_tile:
        for result in results:
            found_by[result["id"]] += 1
            best[result["id"]] = max(best.get(result["id"], float("-inf")), result["score"])
    # Four tiles embedded in one batch and each alone differ in the last float bits (the CPU's
    # convolution kernels depend on the batch), which can swap items whose scores tie to 1e-6:
    # the order is checked against the per-tile scores up to that noise (the tile-count tie-break
    # is `aggregate_tile_hits`' own test's).
    ranked = [r["id"] for r in region["results"]]
    assert sorted(ranked) == sorted(best)
    assert [r["score"] for r in region["results"]] == [
        pytest.approx(best[item], abs=1e-4) for item in ranked
    ]
    for above, below in itertools.pairwise(ranked):
        if abs(best[above] - best[below]) > 1e-4:
            assert best[above] > best[below], (above, below)
    assert [r["rank"] for r in region["results"]] == list(range(1, len(ranked) + 1))
    # Slides are ranked over the pooled hits by the usual rule: best score, then hit count.
    slides: dict[str, tuple[float, int]] = {}
    for result in region["results"]:
        slide = result["extra"]["slide_id"]
        slides.setdefault(slide, (result["score"], 0))
        slides[slide] = (slides[slide][0], slides[slide][1] + 1)
    ranked = sorted(slides, key=lambda s: (-slides[s][0], -slides[s][1], s))
    assert [s["slide_id"] for s in region["slides"]] == ranked


def test_glass_tiles_of_a_region_are_not_searched(region_server):
    server, tiles, _, _ = region_server
    with server.client() as client:
        # 3 x 2 cells, two of them tissue: the four glass cells are dropped.
        body = search(client, mosaic(tiles[:2], 3, 2), k="5")
    assert body["query_tiles"] == 2 and body["tissue_tiles"] == 2


def test_an_upload_at_a_finer_mpp_is_scaled_to_the_index_resolution_before_tiling(region_server):
    server, tiles, _, item_of_box = region_server
    expected = {item_of_box["slide-a", (c * CELL, r * CELL, CELL, CELL)] for c, r in MOSAIC_CELLS}
    fine = mosaic(tiles, 2, 2).resize((600, 600), Image.Resampling.BICUBIC)
    with server.client() as client:
        body = search(client, fine, k="10", mpp="0.25")
        unscaled = search(client, fine, k="8")
    assert body["query_tiles"] == 4
    assert_found_at_the_top(body["results"], expected)
    # Without its mpp the same upload is taken at 0.5 um/px: 16 tiles of a quarter cell each.
    assert unscaled["query_tiles"] == 16


def test_a_region_beyond_the_query_tile_cap_searches_an_evenly_spaced_subset(tmp_path_factory):
    index_dir, slides = build_slide_index(tmp_path_factory.mktemp("capped"))
    tiles = [slide_tile(slides["slide-a"], cell) for cell in MOSAIC_CELLS]
    env = {**archive_roots(index_dir), "HISTOSEARCH_MAX_QUERY_TILES": "3"}
    server = LiveServer(index_dir, index_dir.parent / "server.log", env=env)
    server.start()
    try:
        with server.client() as client:
            body = search(client, mosaic(tiles * 2, 4, 2), k="5")
    finally:
        server.stop()
    assert body["query_tiles"] == 3 and body["tissue_tiles"] == 8


def test_a_region_of_glass_only_is_refused_with_a_clear_422(region_server):
    server, _, _, _ = region_server
    glass = Image.new("RGB", (2048, 1536), (242, 242, 240))
    with server.client() as client:
        response = client.post("/search", files={"image": ("glass.png", png(glass))})
        assert client.get("/health").status_code == 200
    assert response.status_code == 422
    assert response.json()["code"] == "no_tissue"
    assert "150 px tile with tissue" in response.json()["detail"]


def test_a_non_positive_mpp_is_refused(region_server):
    server, tiles, _, _ = region_server
    with server.client() as client:
        response = client.post(
            "/search", files={"image": ("q.png", png(tiles[0]))}, data={"mpp": "0"}
        )
    assert response.status_code == 422
