"""Weight fake quantization: per-channel and per-group grids by hand; weights restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actscope.interventions.quant import (
    QuantSpec,
    QuantSpecError,
    quantize_weight,
    quantized_weights,
)


def test_per_output_channel_int8() -> None:
    w = torch.tensor([[127.0, -63.4, 0.6], [2.0, 1.0, -0.5]])
    q = quantize_weight(w, QuantSpec("int8", True, "channel"))
    s1 = 2.0 / 127
    expected = torch.tensor(
        [[127.0, -63.0, 1.0], [127 * s1, round(1 / s1) * s1, round(-0.5 / s1) * s1]]
    )
    torch.testing.assert_close(q, expected)


def test_int4_asymmetric_groups_along_the_input_dimension() -> None:
    w = torch.tensor([[0.0, 15.0, -1.0, 2.0, 100.0]])
    q = quantize_weight(w, QuantSpec("int4", False, "group", group_size=2))
    # [0, 15]: s = 1, z = 0 -> exact; [-1, 2]: s = 0.2, z = 5 -> exact; [100]: lo widened to 0
    torch.testing.assert_close(q, w)
    w = torch.tensor([[0.1, 0.9, 1.0, 3.7]])
    q = quantize_weight(w, QuantSpec("int4", False, "group", group_size=4))
    s = 3.7 / 15
    torch.testing.assert_close(q, torch.round(w / s) * s)


def test_mse_clip_never_worse_than_max() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 256)  # Gaussian rows: the best 4-bit clip is below the max
    err = {}
    for clip in ("max", "mse"):
        q = quantize_weight(w, QuantSpec("int4", True, "channel", clip))
        err[clip] = (q - w).square().sum(dim=1)
    assert torch.all(err["mse"] <= err["max"] + 1e-6)
    assert bool((err["mse"] < 0.95 * err["max"]).all())


def test_bad_granularity() -> None:
    with pytest.raises(QuantSpecError):
        quantize_weight(torch.ones(2, 2), QuantSpec("int8", True, "token"))


def test_quantized_weights_restores_the_originals() -> None:
    lin = nn.Linear(8, 4)
    before = lin.weight.detach().clone()
    spec = QuantSpec("int4", True, "channel")
    with quantized_weights({"lin": lin}, spec):
        torch.testing.assert_close(lin.weight.data, quantize_weight(before, spec))
        assert not torch.equal(lin.weight.data, before)
    assert torch.equal(lin.weight.data, before)
    with pytest.raises(RuntimeError), quantized_weights({"lin": lin}, spec):
        raise RuntimeError("boom")
    assert torch.equal(lin.weight.data, before)
