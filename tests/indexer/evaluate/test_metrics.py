import pytest
import torch

from indexer.evaluate.metrics import near_duplicate_top1, rank_group_disjoint, retrieval_metrics


def _scores_from_points(points: list[float]) -> torch.Tensor:
    x = torch.tensor(points)
    return -(x[:, None] - x[None, :]).abs()


def test_ranking_never_returns_the_querys_own_group() -> None:
    scores = torch.rand(8, 8)
    groups = ["a", "a", "b", "b", "c", "c", "c", "d"]
    ranked = rank_group_disjoint(scores, groups, depth=4)
    for query, row in enumerate(ranked.tolist()):
        assert all(groups[item] != groups[query] for item in row)


def test_perfect_ranking_scores_one() -> None:
    # Two well separated classes, each spread over several groups.
    points = [0.0, 0.1, 0.2, 0.3, 10.0, 10.1, 10.2, 10.3]
    labels = ["x"] * 4 + ["y"] * 4
    groups = ["g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"]
    metrics = retrieval_metrics(_scores_from_points(points), labels, groups, ks=(1, 3))
    assert metrics.precision == {1: 1.0, 3: 1.0}
    assert metrics.mean_average_precision == {1: 1.0, 3: 1.0}
    assert metrics.majority_vote_accuracy == {1: 1.0, 3: 1.0}


def test_same_group_twin_does_not_count() -> None:
    # Each query's nearest item is its twin in the same group, of the same class; the next
    # nearest item from another group is of the other class.
    points = [0.0, 0.01, 1.0, 1.01]
    labels = ["x", "x", "y", "y"]
    groups = ["g1", "g1", "g2", "g2"]
    metrics = retrieval_metrics(_scores_from_points(points), labels, groups, ks=(1,))
    assert metrics.precision[1] == 0.0


def test_precision_and_average_precision_closed_form() -> None:
    # Query 0 (class x) sees, in order, items of class x, y, x: P@3 = 2/3,
    # AP@3 = (1/1 + 2/3) / 2 = 5/6.
    scores = torch.tensor(
        [
            [9.0, 3.0, 2.0, 1.0],
            [3.0, 9.0, 0.0, 1.0],
            [2.0, 0.5, 9.0, 0.0],
            [1.0, 0.5, 0.0, 9.0],
        ]
    )
    labels = ["x", "x", "y", "x"]
    groups = ["q", "a", "b", "c"]
    metrics = retrieval_metrics(scores, labels, groups, ks=(3,))
    per_query_precision = [2 / 3, 2 / 3, 0.0, 2 / 3]
    per_query_ap = [5 / 6, 1.0, 0.0, 1.0]
    # Query 1 ranks q(x), c(x), b(y); query 2 (y) finds only x; query 3 ranks q(x), a(x), b(y).
    assert metrics.precision[3] == pytest.approx(sum(per_query_precision) / 4)
    assert metrics.mean_average_precision[3] == pytest.approx(sum(per_query_ap) / 4)


def test_majority_vote_breaks_ties_towards_the_first_rank() -> None:
    # Query 0's top 2: class x then class y (one vote each): the first-ranked x wins.
    scores = torch.tensor([[9.0, 5.0, 4.0], [5.0, 9.0, 0.0], [4.0, 0.0, 9.0]])
    metrics = retrieval_metrics(scores, ["x", "x", "y"], ["a", "b", "c"], ks=(2,))
    assert metrics.majority_vote_accuracy[2] == pytest.approx(2 / 3)


def test_near_duplicate_top1_counts_cluster_mates_ranked_first() -> None:
    points = [0.0, 0.01, 5.0, 5.5, 5.2]
    groups = ["a", "a", "b", "b", "solo"]
    # a's mates are nearest; b's members are nearer to "solo" than to each other; solo is ignored.
    assert near_duplicate_top1(_scores_from_points(points), groups) == pytest.approx(2 / 4)
