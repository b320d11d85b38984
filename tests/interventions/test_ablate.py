"""Outlier edits: massive entries by Sun's criterion, whole channels, change counters."""

from __future__ import annotations

import torch

from actscope.interventions.ablate import EditCounter, channel_values, massive_entries


def test_massive_entries_token_median() -> None:
    x = torch.tensor(
        [[[1.0, 2.0, 500.0, 0.5], [1.0, -200.0, 1.0, 1.0], [150.0, 150.0, 150.0, 1.0]]]
    )
    c = EditCounter()
    edit = massive_entries([1, 2], abs_threshold=100, ratio=100, counter=c)
    out = edit(x, None)
    # row 0: lower median of |x| = 1 -> 500 is massive (2 is not > 100)
    # row 1: median 1 -> -200 is massive; row 2: median 150 -> nothing is
    assert out[0, 0].tolist() == [1.0, 2.0, 0.0, 0.5]
    assert out[0, 1].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert torch.equal(out[0, 2], x[0, 2])
    assert c.value() == 2
    mean = massive_entries([1, 2], torch.tensor([-180.0, 450.0]), abs_threshold=100, ratio=100)
    out = mean(x, None)
    assert out[0, 0, 2] == 450.0 and out[0, 1, 1] == -180.0


def test_massive_entries_skip_padding_and_layer_median() -> None:
    x = torch.tensor([[[1.0, 500.0], [1.0, 900.0]]])
    mask = torch.tensor([[True, False]])
    c = EditCounter()
    out = massive_entries([1], abs_threshold=100, ratio=10, median="layer", counter=c)(x, mask)
    # layer median over the real entries (1, 500) is the lower median 1
    assert out[0, 0, 1] == 0.0 and out[0, 1, 1] == 900.0 and c.value() == 1


def test_channel_values() -> None:
    x = torch.arange(12.0).view(1, 3, 4)
    c = EditCounter()
    out = channel_values([0, 3], counter=c)(x, torch.tensor([[True, True, False]]))
    assert out[..., [0, 3]].abs().sum() == 0 and torch.equal(out[..., 1:3], x[..., 1:3])
    assert c.value() == 4
    out = channel_values([2], torch.tensor([-1.5]))(x, None)
    assert out[..., 2].tolist() == [[-1.5, -1.5, -1.5]]
