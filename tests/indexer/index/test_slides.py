"""Ranking slides from tile hits, against rankings worked out by hand; the slide registry."""

from indexer.index.records import ItemRecord
from indexer.index.slides import RankedHit, SlideRecord, SlideRegistry, rank_slides
from tests.indexer.index_helpers import new_index


def hit(rank: int, score: float, slide: str | None) -> RankedHit:
    extra = {} if slide is None else {"slide_id": slide}
    record = ItemRecord(
        id=100 + rank,
        added_at=0.0,
        source=f"{slide}.svs",
        content_hash=f"h{rank}",
        label=None,
        group=slide,
        dataset=None,
        tile=(rank * 10, 0, 64, 64),
        source_size=None,
        thumbnail=None,
        extra=extra,
    )
    return RankedHit(rank, score, record)


HITS = [
    hit(1, 0.9, "aaaa"),
    hit(2, 0.9, "bbbb"),
    hit(3, 0.8, "bbbb"),
    hit(4, 0.7, "cccc"),
    hit(5, 0.6, None),  # a plain image, not a slide tile
    hit(6, 0.5, "cccc"),
    hit(7, 0.5, "aaaa"),
    hit(8, 0.4, "bbbb"),
    hit(9, 0.3, "dddd"),
]


def test_slides_rank_by_best_score_then_hit_count_then_id():
    # By hand: aaaa and bbbb both reach 0.9; bbbb holds 3 hits to aaaa's 2, so it comes first.
    # cccc (best 0.7, 2 hits) and dddd (0.3, 1) follow; the plain image belongs to no slide.
    ranked = rank_slides(list(reversed(HITS)))
    assert [(s.slide_id, s.best_score, s.hit_count) for s in ranked] == [
        ("bbbb", 0.9, 3),
        ("aaaa", 0.9, 2),
        ("cccc", 0.7, 2),
        ("dddd", 0.3, 1),
    ]
    assert [h.rank for h in ranked[0].hits] == [2, 3, 8]
    assert [h.rank for h in ranked[1].hits] == [1, 7]


def test_equal_slides_come_in_slide_id_order_and_the_limit_keeps_the_best():
    tied = [hit(1, 0.5, "zzzz"), hit(2, 0.5, "mmmm"), hit(3, 0.5, "kkkk")]
    assert [s.slide_id for s in rank_slides(tied)] == ["kkkk", "mmmm", "zzzz"]
    assert [s.slide_id for s in rank_slides(HITS, limit=2)] == ["bbbb", "aaaa"]
    assert rank_slides([hit(1, 0.9, None)]) == []


def test_registry_keeps_slides_in_the_index_database_and_readers_never_create_it(tmp_path):
    record = SlideRecord(
        slide_id="0123456789abcdef",
        source="/archive/a.svs",
        slide_hash="0123456789abcdef" * 4,
        width=1000,
        height=800,
        mpp_x=0.25,
        mpp_y=0.26,
        vendor="aperio",
        level_dimensions=[(1000, 800), (250, 200)],
        level_downsamples=[1.0, 4.0],
        label="TUMOR",
        extra={"stain": "HE"},
    )
    with new_index(tmp_path / "index") as index:
        with SlideRegistry(index.directory, create=False) as reader:
            assert reader.count() == 0 and reader.get(record.slide_id) is None
        with SlideRegistry(index.directory) as registry:
            registry.put(record)
            registry.put(record)
        with SlideRegistry(index.directory, create=False) as reader:
            assert reader.count() == 1
            assert reader.get(record.slide_id) == record
            assert reader.get("ffffffffffffffff") is None
