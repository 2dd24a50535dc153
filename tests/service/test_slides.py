"""Slides over HTTP, on a live server: metadata, Deep Zoom against OpenSlide's own generator,
slides ranked in search results, and 404s.

The index is built by `histosearch index --source slides` from two pyramidal TIFFs (mosaics of
real Kather 2016 tiles) with a small randomly initialised model.
"""

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from tests.indexer.index_helpers import SHARED_DATA
from tests.service.conftest import LiveServer
from tests.service.slide_index import CELL


def test_slide_files_outside_the_archive_roots_are_404_naming_the_setting(
    slide_pair_server, tmp_path
):
    server, _ = slide_pair_server
    with server.client() as client:
        slide_id = slide_ids(client)["slide-a"]
    elsewhere = LiveServer(server.index_dir, tmp_path / "server.log").start()
    try:
        with elsewhere.client() as client:
            assert client.get(f"/slides/{slide_id}").status_code == 200
            response = client.get(f"/slides/{slide_id}.dzi")
            assert response.status_code == 404
            assert "HISTOSEARCH_ARCHIVE_ROOTS" in response.json()["detail"]
            assert "archive/TUMOR/slide-a.tif" in response.json()["detail"]
            assert client.post("/search", data={"item_id": "1"}).status_code == 404
    finally:
        elsewhere.stop()


def slide_ids(client) -> dict[str, str]:
    """Slide name -> id, read from the items the index holds."""
    found = {}
    for item_id in range(1, 200):
        response = client.get(f"/images/{item_id}")
        if response.status_code == 200:
            body = response.json()
            found[Path(body["source"]).stem] = body["extra"]["slide_id"]
    return found


def query_png(path: Path, x: int, y: int) -> bytes:
    slide = openslide.OpenSlide(str(path))
    region = slide.read_region((x, y), 1, (150, 150)).convert("RGB")
    buffer = io.BytesIO()
    region.save(buffer, format="PNG")
    return buffer.getvalue()


def test_slide_metadata_gives_dimensions_mpp_vendor_levels_and_tile_count(slide_pair_server):
    server, _ = slide_pair_server
    with server.client() as client:
        ids = slide_ids(client)
        body = client.get(f"/slides/{ids['slide-a']}").json()
        items = [client.get(f"/images/{i}").json() for i in range(1, 200)]
    tiles = sum(1 for item in items if item.get("extra", {}).get("slide_id") == ids["slide-a"])
    assert (body["width"], body["height"]) == (8 * CELL, 6 * CELL)
    assert body["mpp_x"] == body["mpp_y"] == 0.25
    assert body["vendor"] == "generic-tiff"
    assert body["tiles"] == tiles == 16
    assert body["label"] == "TUMOR" and body["group"] == "slide-a"
    assert body["levels"][1] == {"width": 4 * CELL, "height": 3 * CELL, "downsample": 2.0}
    assert body["dzi_url"] == f"/slides/{ids['slide-a']}.dzi"
    assert body["source"] == "archive/TUMOR/slide-a.tif"


def test_deep_zoom_descriptor_and_tiles_are_those_of_openslides_generator(slide_pair_server):
    server, slides = slide_pair_server
    reference = DeepZoomGenerator(openslide.OpenSlide(str(slides["slide-b"])), 254, 1)
    with server.client() as client:
        slide_id = slide_ids(client)["slide-b"]
        descriptor = client.get(f"/slides/{slide_id}.dzi")
        assert descriptor.status_code == 200
        assert descriptor.headers["content-type"].startswith("application/xml")
        assert descriptor.text == reference.get_dzi("jpeg")
        top = reference.level_count - 1
        cols, rows = reference.level_tiles[top]
        for level, col, row in ((top, 0, 0), (top, cols - 1, rows - 1), (top - 2, 1, 0), (0, 0, 0)):
            served = client.get(f"/slides/{slide_id}_files/{level}/{col}_{row}.jpeg")
            assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
            expected = io.BytesIO()
            reference.get_tile(level, (col, row)).save(expected, format="JPEG", quality=75)
            assert served.content == expected.getvalue()
            again = client.get(f"/slides/{slide_id}_files/{level}/{col}_{row}.jpeg")
            assert again.content == served.content
        decoded = Image.open(io.BytesIO(served.content))
        assert decoded.size == reference.get_tile(0, (0, 0)).size


def test_unknown_slides_and_tiles_outside_the_pyramid_are_404(slide_pair_server):
    server, _ = slide_pair_server
    with server.client() as client:
        slide_id = slide_ids(client)["slide-a"]
        for path in (
            "/slides/ffffffffffffffff",
            "/slides/ffffffffffffffff.dzi",
            "/slides/ffffffffffffffff_files/0/0_0.jpeg",
            "/slides/..%2F..%2Fetc%2Fpasswd.dzi",
            f"/slides/{slide_id}_files/40/0_0.jpeg",
            f"/slides/{slide_id}_files/13/99_0.jpeg",
            f"/slides/{slide_id}_files/13/0_99.jpeg",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["code"] == "not_found"
        assert client.get(f"/slides/{slide_id}_files/-1/0_0.jpeg").status_code in (404, 422)
        assert client.get("/health").status_code == 200


def aggregate_by_hand(results: list[dict[str, Any]]) -> list[tuple[str, float, int, list[int]]]:
    hits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        if "slide_id" in result["extra"]:
            hits[result["extra"]["slide_id"]].append(result)
    rows = [
        (slide, max(h["score"] for h in own), len(own), [h["rank"] for h in own])
        for slide, own in hits.items()
    ]
    return sorted(rows, key=lambda row: (-row[1], -row[2], row[0]))


def test_search_ranks_the_slides_of_the_top_hits_and_keeps_the_tile_results(slide_pair_server):
    server, slides = slide_pair_server
    query = query_png(slides["slide-a"], 0, 0)
    with server.client() as client:
        ids = slide_ids(client)
        wide = client.post("/search", files={"image": ("q.png", query)}, data={"k": "100"}).json()
        narrow = client.post("/search", files={"image": ("q.png", query)}, data={"k": "3"}).json()
    expected = aggregate_by_hand(wide["results"])
    assert len(wide["results"]) == 32 and len(expected) == 2
    assert [
        (s["slide_id"], s["best_score"], s["hit_count"], [h["rank"] for h in s["hits"]])
        for s in wide["slides"]
    ] == expected
    assert wide["slides"][0]["slide_id"] == ids["slide-a"]
    assert wide["slides"][0]["hits"][0]["score"] == wide["results"][0]["score"]
    # k=3: the tile results are the first three of the wide search; the slides still come from
    # the top 100 hits, so they are the same slides in the same order, with the same hits.
    assert [r["id"] for r in narrow["results"]] == [r["id"] for r in wide["results"][:3]]
    assert narrow["slides"] == wide["slides"][:3]
    first = wide["slides"][0]
    assert first["label"] == "TUMOR" and first["url"] == f"/slides/{ids['slide-a']}"


def test_search_filters_and_exclude_group_apply_to_slides_as_to_tiles(slide_pair_server):
    server, slides = slide_pair_server
    query = query_png(slides["slide-a"], 0, 0)
    with server.client() as client:
        ids = slide_ids(client)
        excluded = client.post(
            "/search",
            files={"image": ("q.png", query)},
            data={"k": "100", "exclude_group": "slide-a"},
        ).json()
        labelled = client.post(
            "/search", files={"image": ("q.png", query)}, data={"k": "5", "label": "TUMOR"}
        ).json()
    assert [s["slide_id"] for s in excluded["slides"]] == [ids["slide-b"]]
    assert excluded["slides"][0]["hit_count"] == 16
    assert all(r["group"] == "slide-b" for r in excluded["results"])
    assert [s["slide_id"] for s in labelled["slides"]] == [ids["slide-a"]]
    assert labelled["slides"][0]["hit_count"] == 16


def test_an_index_without_slides_answers_searches_with_no_slides_and_404_for_any_slide(
    live_server,
):
    query = sorted((SHARED_DATA / "kather2016-texture-240" / "01_TUMOR").glob("*.tif"))[0]
    with live_server.client() as client:
        body = client.post(
            "/search", files={"image": ("q.tif", query.read_bytes())}, data={"k": "4"}
        ).json()
        assert len(body["results"]) == 4 and body["slides"] == []
        assert client.get("/slides/0123456789abcdef").status_code == 404
        assert client.get("/slides/0123456789abcdef.dzi").status_code == 404


def test_more_like_this_searches_with_the_items_own_tile_re_read_from_its_slide(slide_pair_server):
    server, slides = slide_pair_server
    with server.client() as client:
        item = client.get("/images/5").json()
        by_item = client.post("/search", data={"item_id": "5", "k": "32"}).json()
        # The reference: the item's box read from level 1 of its slide by OpenSlide, uploaded.
        box = item["tile"]
        path = slides[Path(item["source"]).stem]
        assert item["extra"]["level"] == 1 and box["width"] == 2 * item["extra"]["tile_px"]
        upload = query_png(path, box["x"], box["y"])
        by_pixels = client.post("/search", files={"image": ("t.png", upload)}, data={"k": "32"})
    expected = [(r["id"], r["score"]) for r in by_pixels.json()["results"]]
    assert [(r["id"], r["score"]) for r in by_item["results"]] == expected
    assert by_item["query"]["width"] == by_item["query"]["height"] == item["extra"]["tile_px"]
    assert 5 in [r["id"] for r in by_item["results"]]


def test_more_like_this_needs_exactly_one_query_and_a_known_item(slide_pair_server, live_server):
    server, _ = slide_pair_server
    with server.client() as client:
        neither = client.post("/search", data={"k": "3"})
        assert neither.status_code == 422 and neither.json()["code"] == "invalid_request"
        assert "item_id" in neither.json()["detail"]
        both = client.post(
            "/search", files={"image": ("q.png", b"x")}, data={"item_id": "1", "k": "3"}
        )
        assert both.status_code == 422 and "not both" in both.json()["detail"]
        unknown = client.post("/search", data={"item_id": "999999", "k": "3"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    # Kather items name a source that is not a path on this host: refused, the service stays up.
    with live_server.client() as client:
        response = client.post("/search", data={"item_id": "1", "k": "3"})
        assert response.status_code == 404 and "cannot be read" in response.json()["detail"]
        assert client.get("/health").status_code == 200
