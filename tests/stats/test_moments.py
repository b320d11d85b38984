"""Tests of actscope.stats.moments: OSP token kurtosis and per-channel central moments."""

from __future__ import annotations

import numpy as np
import torch

from actscope.stats.moments import ChannelMoments, shift_power_sums, token_kurtosis

CPU = torch.device("cpu")


def _direct_token_kurtosis(x: np.ndarray) -> np.ndarray:
    mean = x.mean(1)
    var = (x * x).mean(1) - mean**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(0.0, (x**4).mean(1) / var**2 - 3.0)


def _direct_channel_kurtosis(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(0)
    return (c**4).mean(0) / ((c**2).mean(0) ** 2) - 3.0


def test_token_kurtosis_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 64, generator=g) + 0.3
    x[3, 7] = 40.0  # an outlier token
    x[10] = 2.0  # constant row: variance 0, undefined
    n = torch.full((50,), 64)
    k, ok = token_kurtosis(n, x.sum(1), (x * x).sum(1), (x**4).sum(1))
    ref = _direct_token_kurtosis(x.double().numpy())
    assert not ok[10] and ok.sum() == 49
    keep = ok.numpy()
    np.testing.assert_allclose(k.numpy()[keep], ref[keep], rtol=1e-5, atol=1e-6)
    assert k[3] > 30  # sqrt(64) sized kurtosis from one planted entry
    _, ok0 = token_kurtosis(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1))
    assert not ok0.any()


def _moments_of(batches: list[torch.Tensor]) -> ChannelMoments:
    m = ChannelMoments(batches[0].shape[1], CPU)
    for x in batches:
        m.add_batch(x, torch.ones(x.shape[0], 1), torch.full((x.shape[1],), x.shape[0]), x.sum(0))
    return m


def test_channel_moments_match_direct_and_merge() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 16, generator=g) ** 3 + torch.linspace(-5, 5, 16)
    x[:, 3] = torch.randn(300, generator=g) + 1000.0  # large offset: needs centring
    x[150:, 5] += 50.0  # the mean moves during the stream
    batches = list(x.split(70))
    one = _moments_of(batches)
    ref = _direct_channel_kurtosis(x.double().numpy())
    np.testing.assert_allclose(one.kurtosis(), ref, rtol=1e-4)
    n, mean, _, _ = one.central()
    np.testing.assert_array_equal(n, np.full(16, 300.0))
    np.testing.assert_allclose(mean, x.double().mean(0).numpy(), rtol=1e-6)
    left, right = _moments_of(batches[:2]), _moments_of(batches[2:])
    left.merge(right)
    for got, want in zip(left.central(), one.central(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10)
    empty = ChannelMoments(16, CPU)
    empty.merge(one)
    for got, want in zip(empty.central(), one.central(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_shift_power_sums_is_the_binomial_shift() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) * 2 + 1
    about = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    target = torch.tensor([1.5, 3.0, -2.0, 0.0], dtype=torch.float64)
    sums = torch.stack([((x - about) ** p).sum(0) for p in range(5)])
    want = torch.stack([((x - target) ** p).sum(0) for p in range(5)])
    got = shift_power_sums(sums, about - target)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)


def test_channel_moments_masked_entries_are_excluded() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 5, generator=g) * 3 + 2
    keep = torch.rand(40, 5, generator=g) > 0.3
    m = ChannelMoments(5, CPU)
    xz = torch.where(keep, x, 0.0)
    m.add_batch(xz, keep.float(), keep.sum(0), xz.sum(0))
    for c in range(5):
        col = x[keep[:, c], c].double().numpy()
        cen = col - col.mean()
        k = (cen**4).mean() / (cen**2).mean() ** 2 - 3
        np.testing.assert_allclose(m.kurtosis()[c], k, rtol=1e-4)
        assert m.central()[0][c] == keep[:, c].sum()


def test_channel_kurtosis_undefined_for_constant_channels() -> None:
    x = torch.ones(10, 2)
    x[:, 1] = torch.arange(10.0)
    k = _moments_of([x]).kurtosis()
    assert np.isnan(k[0]) and np.isfinite(k[1])
