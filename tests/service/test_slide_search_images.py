"""Slide and case queries over an image archive, where each source image is a slide: the small
Kather 2016 index (tiles of 10 large source images, each its own group) on a real server."""

from __future__ import annotations

from support.live_server import LiveServer


def test_a_source_image_as_the_query_ranks_the_other_source_images(live_server: LiveServer):
    with live_server.client() as client:
        item = client.get("/images/1").json()
        response = client.post("/search", data={"query_slide_id": item["source"], "k": "4"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["kind"] == "slide" and body["query"]["excluded_group"] == item["group"]
    assert body["query"]["items"] >= 1  # the tiles cut from that image (one per file here)
    results = body["results"]
    assert len(results) == 4
    for result in results:
        assert result["group"] != item["group"] and result["id"] != item["source"]
        assert result["viewer_url"] is None  # not a whole-slide image
        assert result["evidence"]
        for evidence in result["evidence"]:
            assert evidence["source"] == result["id"]
            assert evidence["thumbnail_url"] == f"/images/{evidence['id']}/thumbnail"


def test_cases_of_an_image_archive_are_its_groups(live_server: LiveServer):
    with live_server.client() as client:
        group = client.get("/images/1").json()["group"]
        fields = {"query_group": group, "group_by": "group", "aggregation": "mean", "k": "3"}
        response = client.post("/search", data=fields)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and all(r["kind"] == "group" and r["id"] != group for r in results)
    assert all(r["evidence"] for r in results)  # the mean ranks cases; evidence is scored
