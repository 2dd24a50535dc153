"""The pure parts of region queries: the evenly spaced subset and the per-item aggregation."""

import numpy as np

from service.regions import aggregate_tile_hits, evenly_spaced


def test_evenly_spaced_keeps_everything_under_the_limit_and_spreads_the_rest():
    assert evenly_spaced(3, 64) == [0, 1, 2]
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced(100, 64) == sorted(set(evenly_spaced(100, 64)))
    assert len(evenly_spaced(100, 64)) == 64
    assert evenly_spaced(5, 1) == [0]


def test_items_rank_by_best_score_then_query_tiles_that_found_them_then_id():
    scores = np.array([[5.0, 4.0, 3.0], [5.0, 4.0, -np.inf]], dtype=np.float32)
    ids = np.array([[7, 9, 3], [8, 3, -1]], dtype=np.int64)
    # 7 and 8 tie at 5.0 (one tile each: id order); 3 (two tiles, best 4.0) beats 9 (one tile).
    assert aggregate_tile_hits(scores, ids, 10) == [(7, 5.0), (8, 5.0), (3, 4.0), (9, 4.0)]
    assert aggregate_tile_hits(scores, ids, 2) == [(7, 5.0), (8, 5.0)]
