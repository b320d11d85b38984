"""Tests of actscope.stats.coords: row ordering, grid coordinates, input checks."""

from __future__ import annotations

import pytest
import torch

from actscope.errors import ActscopeError
from actscope.stats.coords import Coords, StatsError, check_batch


def _coords(sample: list[int], position: list[int]) -> Coords:
    n = len(sample)
    return Coords(
        sample_id=torch.tensor(sample),
        position=torch.tensor(position),
        token_id=torch.arange(n),
        domain_id=torch.zeros(n, dtype=torch.long),
    )


def test_row_rank_orders_by_sample_then_position() -> None:
    sample = [3, 1, 1, 0, 3, 1]
    position = [0, 5, 2, 9, 1, 0]
    c = _coords(sample, position)
    expected_order = sorted(range(6), key=lambda i: (sample[i], position[i]))
    rank = c.row_rank()
    assert [int(rank[i]) for i in expected_order] == list(range(6))
    assert c.row_rank() is rank  # cached


def test_from_grid_flattens_row_major() -> None:
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    c = Coords.from_grid(tokens, torch.tensor([10, 11]), torch.tensor([2, 3]))
    assert c.sample_id.tolist() == [10, 10, 10, 11, 11, 11]
    assert c.position.tolist() == [0, 1, 2, 0, 1, 2]
    assert c.token_id.tolist() == [5, 6, 7, 8, 9, 10]
    assert c.domain_id.tolist() == [2, 2, 2, 3, 3, 3]
    left = Coords.from_grid(
        tokens, torch.tensor([0, 1]), positions=torch.tensor([[0, 0, 1], [0, 1, 2]])
    )
    assert left.position.tolist() == [0, 0, 1, 0, 1, 2]
    assert left.domain_id.tolist() == [0] * 6
    with pytest.raises(StatsError):
        Coords.from_grid(torch.zeros(3, dtype=torch.long), torch.tensor([0]))


def test_check_batch_rejects_bad_input() -> None:
    c = _coords([0, 0], [0, 1])
    ok = torch.ones(2, dtype=torch.bool)
    check_batch(torch.zeros(2, 4), ok, c, None)
    check_batch(torch.zeros(2, 4), ok, c, 4)
    bad = [
        (torch.zeros(2, 4, 1), ok, c, None),
        (torch.zeros(2, 4, dtype=torch.long), ok, c, None),
        (torch.zeros(2, 4), ok, c, 5),
        (torch.zeros(2, 4), torch.ones(3, dtype=torch.bool), c, None),
        (torch.zeros(2, 4), torch.ones(2), c, None),
        (torch.zeros(2, 4), ok, _coords([0, 0, 0], [0, 1, 2]), None),
    ]
    for x, valid, coords, dim in bad:
        with pytest.raises(ActscopeError):
            check_batch(x, valid, coords, dim)
