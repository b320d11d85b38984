"""Tests of actscope.stats.histogram: bins, quantile error bound, exact counts, merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actscope.stats.coords import StatsError
from actscope.stats.histogram import (
    NBINS,
    REL_ERROR,
    AbsHistogram,
    bin_index,
    bin_lower,
    snap_to_edge,
)

CPU = torch.device("cpu")
QS = [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0]


def _heavy(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logn = torch.exp(torch.randn(n, generator=g) * 3.0)
    student = torch.randn(n, generator=g) / torch.randn(n, generator=g).abs().clamp(min=1e-3)
    return torch.cat([logn, student.abs(), torch.zeros(50)])


def _hist(a: torch.Tensor, exact: bool) -> AbsHistogram:
    h = AbsHistogram(CPU)
    h.add(a.float().contiguous(), 0, exact)
    return h


def test_bins_of_bfloat16_values_are_exact() -> None:
    v = _heavy(5000, 0).bfloat16().float()
    b = bin_index(v).numpy()
    assert np.array_equal(bin_lower(b), v.double().numpy())
    assert bin_index(torch.tensor([0.0])).item() == 0
    assert np.isinf(bin_lower(0x7F80)) and np.isinf(bin_lower(NBINS))


def test_quantiles_within_relative_error_bound_float32() -> None:
    a = _heavy(200_000, 1)
    h = _hist(a, exact=False)
    est = AbsHistogram.quantiles(h.numpy(), QS, exact=False)
    ref = torch.quantile(a.double(), torch.tensor(QS, dtype=torch.float64)).numpy()
    rel = np.abs(est - ref) / np.maximum(ref, 1e-30)
    assert np.all(rel[ref > 0] <= REL_ERROR), rel
    assert est[0] == 0.0  # the zeros
    # the bound is tight enough to matter: midpoints are not the exact values
    assert np.any(rel > 0)


def test_quantiles_exact_for_bfloat16() -> None:
    a = _heavy(100_000, 2).bfloat16().float()
    h = _hist(a, exact=True)
    est = AbsHistogram.quantiles(h.numpy(), QS, exact=True)
    ref = torch.quantile(a.double(), torch.tensor(QS, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(est, ref, rtol=1e-12, atol=0)
    med = bin_lower(AbsHistogram.lower_median_bin(h.numpy()))
    assert med == a.median().item()  # torch's lower median


def test_count_below_is_exact_on_bin_edges() -> None:
    a = _heavy(50_000, 3)
    h = _hist(a, exact=False).numpy()
    for eps in (1e-3, 0.5, 3.0, 1234.5):
        edge = snap_to_edge(eps)
        assert edge <= eps
        assert AbsHistogram.count_below(h, edge) == int((a < edge).sum())
    with pytest.raises(StatsError):
        snap_to_edge(-1.0)
    with pytest.raises(StatsError):
        snap_to_edge(float("nan"))


def test_excluded_zeros_and_merge() -> None:
    a = _heavy(1000, 4)
    padded = torch.cat([a, torch.zeros(70)])
    h1 = AbsHistogram(CPU)
    h1.add(padded, torch.tensor(70), exact=True)
    assert np.array_equal(h1.numpy(), _hist(a, True).numpy())
    h2 = _hist(_heavy(500, 5), exact=False)
    h1.merge(h2)
    assert not h1.exact
    both = torch.cat([a, _heavy(500, 5)])
    assert np.array_equal(h1.numpy(), _hist(both, False).numpy())


def test_empty_histogram_reads_nan() -> None:
    h = AbsHistogram(CPU).numpy()
    assert np.all(np.isnan(AbsHistogram.quantiles(h, [0.5], exact=True)))
    assert AbsHistogram.lower_median_bin(h) == -1
    with pytest.raises(StatsError):
        AbsHistogram.quantiles(h, [1.5], exact=True)
