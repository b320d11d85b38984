"""The one-pass numba kernel against direct torch computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actscope.stats.fused import event_fields, partials, topk_events
from actscope.stats.fused.partials import raw_bits

KW = dict(
    channels=True, channel_moments=True, massive=True, massive_abs=100.0, massive_ratio=1000.0
)


def _direct(x: torch.Tensor, valid: torch.Tensor) -> dict[str, np.ndarray]:
    xf = x.float()
    fin = torch.isfinite(xf) & valid[:, None]
    xz = torch.where(fin, xf, 0.0).double()
    return {
        "n_row": fin.sum(1).numpy(),
        "s1": xz.sum(1).numpy(),
        "s2": (xz**2).sum(1).numpy(),
        "s4": (xz**4).sum(1).numpy(),
        "c2": (xz**2).sum(0).numpy(),
        "cmax": xz.abs().amax(0).float().numpy(),
        "n_col": fin.sum(0).numpy(),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("shift", [0.0, 5.0, -5.0])
def test_partials_match_direct(dtype: torch.dtype, shift: float) -> None:
    torch.manual_seed(0)
    x = (torch.randn(64, 40) * 3 + shift).to(dtype)
    x[3, 7] = float("nan")
    x[5, 1] = float("inf")
    x[6, 2] = float("-inf")
    x[0, 0] = 30000.0  # >= 1000 x the row median even with the shifted rows
    valid = torch.ones(64, dtype=torch.bool)
    valid[-5:] = False
    p = partials(x, valid, **KW)
    d = _direct(x, valid)
    np.testing.assert_array_equal(p.n_row, d["n_row"])
    np.testing.assert_array_equal(p.n_col, d["n_col"])
    np.testing.assert_allclose(p.s1, d["s1"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(p.s2, d["s2"], rtol=1e-5)
    np.testing.assert_allclose(p.s4, d["s4"], rtol=1e-5)
    # per-channel sums: float32 over blocks of 32 rows, then float64
    np.testing.assert_allclose(p.c2, d["c2"], rtol=1e-6)
    np.testing.assert_array_equal(p.cmax, d["cmax"])
    assert list(p.nonfinite) == [1, 1, 1]
    ok = (torch.isfinite(x.float()).all(1) & valid).numpy()
    xf = x.float()
    np.testing.assert_array_equal(p.rmax[ok], xf.amax(1).numpy()[ok])
    np.testing.assert_array_equal(p.rmin[ok], xf.amin(1).numpy()[ok])
    np.testing.assert_array_equal(p.row_max[ok], xf.abs().amax(1).numpy()[ok])
    assert p.hist.sum() == int(d["n_row"].sum())
    assert p.m_row[0] == 1 and p.m_col[0] == 1 and p.m_row[1:].sum() == 0
    # power sums about the batch channel means
    fin = torch.isfinite(xf) & valid[:, None]
    mean = torch.where(fin, xf, 0).double().sum(0) / fin.sum(0)
    np.testing.assert_allclose(p.power_ref, mean.numpy(), rtol=1e-6, atol=1e-6)
    cen = torch.where(fin, xf.double() - torch.from_numpy(p.power_ref), 0.0)
    np.testing.assert_allclose(p.power[2], (cen**2).sum(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(p.power[4], (cen**4).sum(0).numpy(), rtol=1e-9)
    # one pass: power sums about a given reference (float32 blocks, then float64)
    ref = mean.numpy() + 0.3
    q = partials(x, valid, **KW, moment_ref=ref)
    np.testing.assert_array_equal(q.power_ref, ref)
    off = torch.where(fin, xf.double() - torch.from_numpy(ref), 0.0)
    for j in (1, 2, 3, 4):  # float32 rounding of each term: relative to sum |x - ref|^j
        err = np.abs(q.power[j] - (off**j).sum(0).numpy())
        assert (err <= 2e-6 * (off.abs() ** j).sum(0).numpy()).all(), j


def test_padding_rows_are_never_read() -> None:
    x = torch.randn(8, 16).to(torch.bfloat16)
    valid = torch.tensor([True] * 4 + [False] * 4)
    y = x.clone()
    y[4:] = float("nan")
    a, b = partials(x, valid, **KW), partials(y, valid, **KW)
    np.testing.assert_array_equal(a.hist, b.hist)
    np.testing.assert_array_equal(a.c1, b.c1)
    assert list(b.nonfinite) == [0, 0, 0]


def _massive_direct(x: torch.Tensor, abs_t: float, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    a = x.float().abs()
    med = a.sort(dim=1).values[:, (a.shape[1] + 1) // 2 - 1 : (a.shape[1] + 1) // 2]
    hit = (a > abs_t) & (a >= ratio * med)
    return hit.sum(1).numpy(), hit.sum(0).numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_massive_counts_with_and_without_the_median(dtype: torch.dtype) -> None:
    """Rows whose max exceeds the absolute threshold but cannot hold a hit skip the median;
    rows with small medians compute it; both give the direct per-token counts."""
    torch.manual_seed(1)
    x = torch.randn(200, 64).abs() * torch.logspace(-4, 1, 200)[:, None]  # medians 1e-4 .. 10
    x[:, 5] = 150.0  # every row exceeds |a| > 100; a hit needs median <= 0.15
    x[:, 9] = torch.linspace(50.0, 5000.0, 200)
    x[7, :32] = 0.15  # exactly at the boundary: the lower median is 150 / 1000
    x[7, 32:] = 1.0
    x[7, 5] = 150.0
    x = (x * torch.where(torch.rand(200, 64) < 0.5, -1.0, 1.0)).to(dtype)
    p = partials(x, torch.ones(200, dtype=torch.bool), **KW)
    m_row, m_col = _massive_direct(x, 100.0, 1000.0)
    assert m_row.sum() > 0 and (m_row == 0).sum() > 0
    np.testing.assert_array_equal(p.m_row, m_row)
    np.testing.assert_array_equal(p.m_col, m_col)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_topk_matches_the_torch_events(dtype: torch.dtype) -> None:
    """The numba top-K picks the same events as ``Events.from_batch``, ties included."""
    from actscope.stats import Coords
    from actscope.stats.topk import Events

    torch.manual_seed(2)
    x = torch.randint(-40, 41, (96, 24)).float() / 8  # few distinct values: many exact ties
    x[10] = x[50]  # identical rows in different samples and positions
    x = x.to(dtype)
    valid = torch.ones(96, dtype=torch.bool)
    valid[[3, 50]] = False
    ids = torch.randint(0, 50, (6, 16))
    pos = torch.arange(16).flip(0).expand(6, 16)  # rank order differs from row order
    coords = Coords.from_grid(
        ids, torch.tensor([5, 1, 4, 2, 0, 3]), torch.zeros(6, dtype=torch.long), positions=pos
    )
    a = x.float().abs()
    row_max = torch.where(valid, a.amax(1), 0.0)
    for k in (1, 7, 40):
        bits = raw_bits(x)
        vals, rows, chans = topk_events(
            bits, row_max.numpy(), valid.numpy(), coords.row_rank().numpy(), k
        )
        mine = Events(*map(torch.from_numpy, event_fields(vals, rows, chans, coords)))
        ref = Events.from_batch(a, row_max, valid, coords, k, None)
        got, want = mine.to_numpy(), ref.to_numpy()
        for f in want:
            np.testing.assert_array_equal(got[f], want[f], err_msg=f"{f} k={k}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rows_too_large_for_float32_powers_take_the_float64_path(dtype: torch.dtype) -> None:
    """|x| >= 2^24 (x^4 could overflow a float32 block sum): the row is reduced in float64 and
    matches the direct sums; the other rows keep the block path."""
    torch.manual_seed(3)
    x = torch.randn(40, 24) * 2
    x[7, 5] = 3.0e9
    x[20, 0] = -5.0e7
    x = x.to(dtype)
    valid = torch.ones(40, dtype=torch.bool)
    ref = np.zeros(24)
    p = partials(x, valid, **KW, moment_ref=ref)
    d = _direct(x, valid)
    np.testing.assert_allclose(p.s2, d["s2"], rtol=1e-6)
    np.testing.assert_allclose(p.s4, d["s4"], rtol=1e-6)
    np.testing.assert_allclose(p.c2, d["c2"], rtol=1e-6)
    np.testing.assert_array_equal(p.cmax, d["cmax"])
    np.testing.assert_array_equal(p.n_col, d["n_col"])
    assert p.chunk_rows.sum() == 38 and p.chunk_n.sum() == 2 * 24  # two rows entry by entry
    xd = x.double()
    np.testing.assert_allclose(p.power[4], (xd**4).sum(0).numpy(), rtol=1e-6)
    assert np.isfinite(p.power).all()
    # a reference too large for float32 differences: every row goes entry by entry
    big = np.full(24, 1.0e8)
    q = partials(x, valid, **KW, moment_ref=big)
    assert q.chunk_rows.sum() == 0
    np.testing.assert_allclose(q.power[2], ((xd - 1.0e8) ** 2).sum(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(q.c2, p.c2, rtol=1e-6)


def _bins(x: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Direct |x| histogram: bin = top 16 bits of float32 |x|, finite entries of valid rows."""
    xf = x.float()
    ok = torch.isfinite(xf) & valid[:, None]
    bits = xf.abs()[ok].view(torch.int32) >> 16
    return torch.bincount(bits.long(), minlength=1 << 15).numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_histogram_is_added_to_the_given_counts_and_the_scratch_is_left_zero(
    dtype: torch.dtype,
) -> None:
    """Only the bins between a chunk's smallest and largest non-zero |x| (and bin 0) are
    folded from the scratch: rows of zeros, tiny and huge values, NaN/Inf rows (whole range)
    and padding all give the direct counts, and a second call adds to the first."""
    from actscope.stats.fused.partials import _scratch

    torch.manual_seed(4)
    x = torch.randn(37, 50) * torch.logspace(-30, 30, 37)[:, None]
    x[3] = 0.0
    x[5, :10] = 0.0
    x[9, 4] = float("nan")
    x[11, 0] = float("-inf")
    x[20, 7] = 1.0e-38  # subnormal in float32
    x = x.to(dtype)
    valid = torch.ones(37, dtype=torch.bool)
    valid[30:33] = False
    out = np.zeros(1 << 15, np.int64)
    p = partials(x, valid, **KW, hist_out=out)
    assert p.hist is out
    np.testing.assert_array_equal(out, _bins(x, valid))
    y = (torch.randn(6, 50) * 1e3).to(dtype)
    partials(y, torch.ones(6, dtype=torch.bool), **KW, hist_out=out)
    np.testing.assert_array_equal(out, _bins(x, valid) + _bins(y, torch.ones(6, dtype=bool)))
    for scratch in (_scratch(n, wide) for n in (1, 2) for wide in (False, True)):
        assert not scratch.any()
    zero = partials(torch.zeros(4, 8, dtype=dtype), torch.ones(4, dtype=torch.bool), **KW)
    assert zero.hist[0] == 32 and zero.hist.sum() == 32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_extremes_at_the_edges_of_the_format(dtype: torch.dtype) -> None:
    """Signed max/min and max |x| from the bit-pattern keys: all-negative, all-zero (signed
    zeros), single-value and largest-finite rows."""
    big = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).tiny
    rows = [
        [-3.0, -1.0, -2.0, -7.5],
        [0.0, -0.0, 0.0, -0.0],
        [2.5, 2.5, 2.5, 2.5],
        [big, -big, 1.0, -1.0],
        [tiny, -tiny, 0.0, 1e-3],
        [-0.0, -5.0, 5.0, -5.0],
    ]
    x = torch.tensor(rows, dtype=torch.float32).to(dtype)
    p = partials(x, torch.ones(len(rows), dtype=torch.bool), **KW)
    xf = x.float()
    np.testing.assert_array_equal(p.rmax, xf.amax(1).numpy())
    np.testing.assert_array_equal(p.rmin, xf.amin(1).numpy())
    np.testing.assert_array_equal(p.row_max, xf.abs().amax(1).numpy())
    assert np.signbit(p.rmax[1]) == np.signbit(xf[1].amax().numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_wide_rows_are_summed_in_blocks(dtype: torch.dtype) -> None:
    """Rows as wide as a vocabulary (logits, with an offset) keep their sums to ~1e-7: float32
    lanes over blocks of 512 entries, float64 across blocks (one float32 sum over 50k entries
    drifts by ~1e-5)."""
    torch.manual_seed(5)
    x = (torch.randn(3, 50_000) * 6 - 8).to(dtype)
    p = partials(x, torch.ones(3, dtype=torch.bool), **KW)
    xd = x.double()
    for got, j in ((p.s1, 1), (p.s2, 2), (p.s4, 4)):
        want = (xd**j).sum(1).numpy()
        scale = (xd.abs() ** j).sum(1).numpy()
        assert (np.abs(got - want) <= 1e-7 * scale).all(), j
