import math

import pytest
import torch

from model.loss import (
    CodewordUsageRegularizer,
    CrossQuantizedContrastiveLoss,
    NegativeQueue,
    NeighbourSupport,
)


def _orthonormal_rows(n: int, dim: int) -> torch.Tensor:
    return torch.eye(dim)[:n]


@pytest.mark.parametrize(("batch", "temperature"), [(2, 0.5), (4, 0.5), (7, 0.2), (16, 1.0)])
def test_aligned_orthogonal_views_give_the_closed_form(batch: int, temperature: float) -> None:
    x = _orthonormal_rows(batch, 32)
    loss = CrossQuantizedContrastiveLoss(temperature)(x, x.clone(), x.clone(), x.clone())
    # Positive cosine 1, the 2N - 2 negatives cosine 0.
    expected = math.log(1 + (2 * batch - 2) * math.exp(-1 / temperature))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_swapped_partners_cost_more_than_aligned_ones() -> None:
    x = _orthonormal_rows(4, 8)
    loss = CrossQuantizedContrastiveLoss()
    shuffled = x[[1, 0, 3, 2]]
    assert float(loss(x, shuffled, x, shuffled)) > float(loss(x, x, x, x)) + 1.0


def test_loss_takes_batch_size_from_input_and_is_differentiable() -> None:
    loss = CrossQuantizedContrastiveLoss()
    for batch in (3, 9):
        x_a = torch.randn(batch, 16, requires_grad=True)
        value = loss(x_a, torch.randn(batch, 16), torch.randn(batch, 16), torch.randn(batch, 16))
        value.backward()
        assert x_a.grad is not None and x_a.grad.shape == (batch, 16)


def test_loss_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="temperature"):
        CrossQuantizedContrastiveLoss(0.0)
    loss = CrossQuantizedContrastiveLoss()
    with pytest.raises(ValueError, match="shape"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="at least 2"):
        one = torch.randn(1, 8)
        loss(one, one, one, one)


def test_regulariser_is_zero_for_even_usage_and_one_for_collapse() -> None:
    regularizer = CodewordUsageRegularizer()
    even = torch.eye(16).unsqueeze(1).repeat(1, 3, 1)  # 16 images, 3 sub-spaces, one each
    collapsed = torch.zeros(16, 3, 16)
    collapsed[..., 0] = 1.0
    assert float(regularizer(even)) == pytest.approx(0.0, abs=1e-6)
    assert float(regularizer(collapsed)) == pytest.approx(1.0, abs=1e-6)


def test_queued_negatives_join_the_closed_form() -> None:
    batch, queued, temperature = 4, 6, 0.5
    rows = _orthonormal_rows(batch + queued, 32)
    x, negatives = rows[:batch], rows[batch:]
    loss = CrossQuantizedContrastiveLoss(temperature)(x, x, x, x, negatives)
    # Each row now meets the 2N - 2 batch negatives and the Q queued ones, all at cosine 0.
    expected = math.log(1 + (2 * batch - 2 + queued) * math.exp(-1 / temperature))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_queued_negatives_like_the_anchors_cost_more_and_take_no_gradient() -> None:
    x = _orthonormal_rows(4, 8)
    loss = CrossQuantizedContrastiveLoss()
    queued = x.clone().requires_grad_(True)
    # Each row's copy in the queue scores as high as its positive: about log 2 more.
    assert float(loss(x, x, x, x, queued)) > float(loss(x, x, x, x)) + 0.5
    assert float(loss(x, x, x, x, torch.empty(0, 8))) == pytest.approx(float(loss(x, x, x, x)))
    loss(x.clone().requires_grad_(True), x, x, x, queued).backward()
    assert queued.grad is None


def test_the_queue_keeps_the_newest_rows_up_to_its_size() -> None:
    queue = NegativeQueue(5)
    assert queue.contents() is None
    queue.push(torch.full((3, 2), 1.0))
    queue.push(torch.full((3, 2), 2.0, requires_grad=True))
    contents = queue.contents()
    assert contents is not None and not contents.requires_grad
    assert contents[:, 0].tolist() == [2.0, 2.0, 2.0, 1.0, 1.0]
    empty = NegativeQueue(0)
    empty.push(torch.ones(3, 2))
    assert empty.contents() is None
    with pytest.raises(ValueError, match="queue size"):
        NegativeQueue(-1)


def test_a_neighbour_is_the_most_cosine_similar_entry_and_carries_no_gradient() -> None:
    support = NeighbourSupport(4)
    entries = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    support.push(entries)
    rows = torch.tensor([[0.2, 5.0], [2.0, 0.1], [-0.5, -0.4]], requires_grad=True)
    nearest = support.nearest(rows)
    # Cosine, not distance, picks the entry: [0, 3] is far from [0.2, 5] yet points the same way.
    torch.testing.assert_close(nearest, entries[[1, 0, 2]])
    assert not nearest.requires_grad


def test_an_empty_support_pairs_each_view_with_itself() -> None:
    rows = torch.randn(3, 8, requires_grad=True)
    nearest = NeighbourSupport(5).nearest(rows)
    torch.testing.assert_close(nearest, rows.detach())
    assert not nearest.requires_grad


def test_the_support_keeps_the_newest_rows_up_to_its_size() -> None:
    support = NeighbourSupport(3)
    support.push(torch.zeros(2, 4))
    support.push(torch.ones(2, 4))
    contents = support.contents()
    assert contents is not None and contents.shape == (3, 4)
    torch.testing.assert_close(contents[:2], torch.ones(2, 4))
    torch.testing.assert_close(contents[2:], torch.zeros(1, 4))
    off = NeighbourSupport(0)
    off.push(torch.ones(2, 4))
    assert off.contents() is None
    with pytest.raises(ValueError, match="0 or more"):
        NeighbourSupport(-1)
