"""The signed bfloat16-pattern histogram gives exact quantiles of x and |x|."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actscope.interventions.quant import SignedHistogram


def _heavy_tailed(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(2 * torch.randn(n, generator=g))
    x[:3] = torch.tensor([0.0, -0.0, 32768.0])
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("qs", [[0.0, 0.01, 0.5, 0.99, 0.999, 0.9999, 1.0]])
def test_quantiles_are_exact_for_bfloat16(qs: list[float]) -> None:
    x = _heavy_tailed(20_000, 0)
    h = SignedHistogram()
    for part in x.split(7000):  # merged over updates
        h.add(part.view(-1, 1))
    assert h.exact and h.n == x.numel()
    ref = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h.quantiles(qs), ref, rtol=1e-12, atol=0)
    ref_abs = torch.quantile(x.double().abs(), torch.tensor(qs, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h.abs_quantiles(qs), ref_abs, rtol=1e-12, atol=0)
    lo, hi = h.min_max()
    assert lo == float(x.min()) and hi == float(x.max()) and h.abs_max() == 32768.0


def test_padding_rows_are_not_counted_and_merge_adds() -> None:
    x = torch.tensor([[[1.0, -2.0], [50.0, 60.0]]], dtype=torch.bfloat16)
    valid = torch.tensor([[True, False]])
    h = SignedHistogram()
    h.add(x, valid)
    assert h.n == 2 and h.min_max() == (-2.0, 1.0)
    other = SignedHistogram()
    other.add(torch.tensor([[-7.0]], dtype=torch.bfloat16))
    h.merge(other)
    assert h.n == 3 and h.min_max() == (-7.0, 1.0)


def test_float32_input_is_within_the_bin_error() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5000, generator=g) * 10
    h = SignedHistogram()
    h.add(x.view(-1, 1))
    assert not h.exact
    qs = [0.001, 0.5, 0.999]
    ref = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64)).numpy()
    got = h.quantiles(qs)
    # midpoint of a bfloat16 truncation bin: relative error <= 2^-8
    assert np.all(np.abs(got - ref) <= 2.0**-8 * np.abs(ref) + 1e-6)


def test_empty_histogram_gives_nan() -> None:
    h = SignedHistogram()
    assert np.isnan(h.quantiles([0.5])[0]) and np.isnan(h.abs_max())
