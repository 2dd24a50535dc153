"""The slides of an index: what a slide is per kind of item, slide means as codes, and slide,
case and vector-set searches over one index and over shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from indexer.index.errors import IndexInputError
from indexer.index.pq import adc_scores, assign_codes, decode, lookup_tables
from indexer.index.shards import ShardedIndex
from indexer.index.slide_archive import (
    IndexSlides,
    SlideArchiveCache,
    SlideSearchRequest,
    search_slides,
)
from indexer.index.slide_search import (
    Aggregation,
    EmptySlideError,
    UnknownGroupError,
    UnknownSlideError,
)
from indexer.index.store import ArchiveIndex, NewItem
from tests.indexer.index_helpers import (
    DIM,
    descriptors_near_codewords,
    items,
    new_index,
    unit_codebooks,
)

SLIDES = 12


def slide_records(count: int = 60) -> tuple[list[NewItem], list[str]]:
    """Items of 12 slides (``extra.slide_id``) of 6 patients, two slides each."""
    names = [f"slide-{i % SLIDES:02d}" for i in range(count)]
    records = [
        dataclasses.replace(
            record, group=f"patient-{int(name[-2:]) % 6}", extra={"slide_id": name, "row": i}
        )
        for i, (record, name) in enumerate(zip(items(count), names, strict=True))
    ]
    return records, names


@pytest.fixture
def slide_index(tmp_path: Path) -> tuple[ArchiveIndex, np.ndarray, list[str]]:
    records, names = slide_records()
    index = new_index(tmp_path / "index")
    vectors = descriptors_near_codewords(len(records), index.codebooks, seed=3)
    index.add(vectors, records)
    return index, vectors, names


def test_items_with_a_slide_id_belong_to_that_slide_and_its_patient(slide_index):
    index, _, names = slide_index
    slides = IndexSlides.of_index(index)
    assert slides.catalog.slide_ids == tuple(sorted(set(names)))
    assert slides.catalog.target_group(slides.catalog.slide_position("slide-07"), "slide") == (
        "patient-1"
    )
    assert len(slides.catalog.items_of_slides([slides.catalog.slide_position("slide-07")])) == 5
    index.close()


def test_image_items_without_a_slide_id_are_slides_of_their_source_image(tmp_path):
    records = [
        NewItem(source=f"img-{i % 3}.png", content_hash=f"h{i}", archive="kather", group=None)
        for i in range(9)
    ]
    with new_index(tmp_path / "index") as index:
        index.add(descriptors_near_codewords(9, index.codebooks), records)
        slides = IndexSlides.of_index(index)
    assert slides.catalog.slide_ids == ("kather/img-0.png", "kather/img-1.png", "kather/img-2.png")
    # No group: each image is its own patient.
    assert slides.catalog.groups == slides.catalog.slide_ids


def test_slide_means_are_the_mean_decoded_codes_and_their_codes_assign_that_mean(slide_index):
    index, vectors, names = slide_index
    slides = IndexSlides.of_index(index)
    codes = assign_codes(vectors, index.codebooks)
    for position, slide in enumerate(slides.catalog.slide_ids):
        rows = [i for i, name in enumerate(names) if name == slide]
        expected = decode(codes[rows], index.codebooks).mean(axis=0)
        np.testing.assert_allclose(slides.means[position], expected, atol=1e-5)
    np.testing.assert_array_equal(slides.mean_codes, assign_codes(slides.means, index.codebooks))
    index.close()


def test_a_reopened_index_derives_the_same_slide_means(slide_index):
    index, _, _ = slide_index
    before = IndexSlides.of_index(index)
    index.close()
    with ArchiveIndex.open(index.directory) as reopened:
        after = IndexSlides.of_index(reopened)
    np.testing.assert_array_equal(before.mean_codes, after.mean_codes)
    np.testing.assert_allclose(before.means, after.means)


def test_the_cache_rebuilds_after_items_are_added_or_removed(slide_index):
    index, _, _ = slide_index
    cache = SlideArchiveCache(index)
    first = cache.current()
    assert cache.current() is first
    index.remove([int(first.catalog.item_ids[0])])
    second = cache.current()
    assert second is not first and len(second.catalog.item_ids) == len(first.catalog.item_ids) - 1
    index.close()


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_a_slide_query_never_returns_its_own_patient_and_every_answer_has_evidence(
    slide_index, aggregation
):
    index, _, _ = slide_index
    slides = IndexSlides.of_index(index)
    request = SlideSearchRequest(slide_id="slide-03", aggregation=aggregation)
    answer = search_slides(slides, index, request, k=5)
    assert answer.excluded_group == "patient-3"
    assert len(answer.ranked) == 5
    assert all(target.group != "patient-3" for target in answer.ranked)
    for target in answer.ranked:
        assert target.evidence
        members = slides.catalog.items_of_slides([slides.catalog.slide_position(target.target)])
        assert {e.item_id for e in target.evidence} <= set(members.tolist())
    index.close()


def test_the_mean_aggregation_ranks_slides_by_adc_against_the_mean_codes(slide_index):
    index, _, _ = slide_index
    slides = IndexSlides.of_index(index)
    answer = search_slides(
        slides, index, SlideSearchRequest(slide_id="slide-03", aggregation=Aggregation.MEAN), k=10
    )
    query_mean = slides.means[slides.catalog.slide_position("slide-03")]
    adc = adc_scores(lookup_tables(query_mean[None, :], index.codebooks), slides.mean_codes)[0]
    kept = [
        (float(adc[p]), s)
        for p, s in enumerate(slides.catalog.slide_ids)
        if slides.catalog.target_group(p, "slide") != "patient-3"
    ]
    kept.sort(key=lambda pair: (-pair[0], pair[1]))
    assert [t.target for t in answer.ranked] == [s for _, s in kept]
    index.close()


def test_without_exclusion_a_slide_finds_itself_first(slide_index):
    index, _, _ = slide_index
    slides = IndexSlides.of_index(index)
    answer = search_slides(
        slides, index, SlideSearchRequest(slide_id="slide-03", exclude_group=""), k=3
    )
    assert answer.ranked[0].target == "slide-03"
    index.close()


def test_a_case_query_answers_cases_without_its_own(slide_index):
    index, _, _ = slide_index
    slides = IndexSlides.of_index(index)
    request = SlideSearchRequest(group="patient-2", group_by="group")
    answer = search_slides(slides, index, request, k=10)
    assert answer.query_items == 10  # two slides of five items
    assert sorted(t.target for t in answer.ranked) == [f"patient-{p}" for p in (0, 1, 3, 4, 5)]
    index.close()


def test_unknown_slides_groups_empty_sets_and_wrong_dimensions_are_refused(slide_index):
    index, _, _ = slide_index
    slides = IndexSlides.of_index(index)
    with pytest.raises(UnknownSlideError, match="slide-99"):
        search_slides(slides, index, SlideSearchRequest(slide_id="slide-99"), k=3)
    with pytest.raises(UnknownGroupError, match="patient-99"):
        search_slides(slides, index, SlideSearchRequest(group="patient-99"), k=3)
    with pytest.raises(EmptySlideError):
        search_slides(slides, index, SlideSearchRequest(vectors=np.zeros((0, DIM))), k=3)
    with pytest.raises(IndexInputError, match=str(DIM)):
        search_slides(slides, index, SlideSearchRequest(vectors=np.zeros((4, DIM + 1))), k=3)
    with pytest.raises(IndexInputError, match="exactly one"):
        SlideSearchRequest(slide_id="slide-01", group="patient-1")
    index.close()


def test_an_uploaded_vector_set_ranks_the_slide_it_was_taken_from_first(slide_index):
    index, vectors, names = slide_index
    slides = IndexSlides.of_index(index)
    own = vectors[[name == "slide-05" for name in names]]
    answer = search_slides(slides, index, SlideSearchRequest(vectors=own), k=3)
    assert answer.excluded_group is None
    assert answer.ranked[0].target == "slide-05"
    index.close()


def test_a_sharded_index_answers_as_one_index(tmp_path, slide_index):
    index, vectors, _ = slide_index
    records, _ = slide_records()
    with ShardedIndex.create_from_codebooks(
        tmp_path / "sharded", unit_codebooks(), card={}, shard_count=3
    ) as sharded:
        sharded.add(vectors, records)
        one, many = IndexSlides.of_index(index), IndexSlides.of_index(sharded)
        assert one.catalog.slide_ids == many.catalog.slide_ids
        np.testing.assert_array_equal(one.mean_codes, many.mean_codes)
        request = SlideSearchRequest(slide_id="slide-03")
        expected = search_slides(one, index, request, k=5).ranked
        found = search_slides(many, sharded, request, k=5).ranked
        assert [(t.target, round(t.score, 4)) for t in found] == [
            (t.target, round(t.score, 4)) for t in expected
        ]
    index.close()


def test_shards_that_cannot_list_their_items_are_refused_by_name():
    class RemoteShards:
        """A sharded index whose shards answer only searches (as shards in other processes)."""

        shards = (object(),)

    with pytest.raises(IndexInputError, match="local shards"):
        IndexSlides.of_index(RemoteShards())
