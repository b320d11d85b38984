"""Tests of actscope.stats.massive: Sun et al.'s criterion with the per-token median."""

from __future__ import annotations

import numpy as np
import torch

from actscope.stats.massive import massive_per_token


def _direct(a: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|a| > 100 and |a| >= 1000 * lower median of the row's counted entries."""
    hit = np.zeros(a.shape, dtype=bool)
    for r in range(a.shape[0]):
        vals = np.sort(a[r][ok[r]])
        if vals.size == 0:
            continue
        med = vals[(vals.size + 1) // 2 - 1]
        hit[r] = ok[r] & (a[r] > 100) & (a[r] >= np.float32(1000) * np.float32(med))
    return hit.sum(1), hit.sum(0)


def _data(seed: int, nan: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows, dim = 200, 48
    a = (torch.randn(rows, dim, generator=g) * 0.05).abs()
    a[::3, 5] = 150.0  # massive on every third token
    a[1, 9] = 80.0  # large ratio but not > 100
    a[2, :30] = 1.0  # row median 1: 150 is not >= 1000 x median
    a[2, 5] = 150.0
    a[4, 7] = 5000.0
    a[:, 40] = torch.where(torch.arange(rows) % 2 == 0, 200.0, 0.0)  # many candidate rows
    ok = torch.ones(rows, dim, dtype=torch.bool)
    ok[7] = False  # padding row
    if nan:
        ok[9, :10] = False  # entries excluded (non-finite upstream)
    return a, ok, ok.any(1)


def test_massive_counts_match_direct_in_every_path() -> None:
    for nan in (False, True):
        a, ok, row_ok = _data(0, nan)
        ref_row, ref_col = _direct(a.numpy(), ok.numpy())
        assert ref_row.sum() > 50
        row_max = torch.where(ok, a, -1.0).amax(1)
        n_row = ok.sum(1)
        entry_ok = ok if nan else None
        if not nan:
            a = torch.where(ok, a, 0.0)
        for branch_free in (False, True):
            for narrow in (0, 10_000):
                got_row, got_col = massive_per_token(
                    a, row_max, row_ok, entry_ok, n_row, 100.0, 1000.0, branch_free, narrow
                )
                np.testing.assert_array_equal(got_row.numpy(), ref_row)
                np.testing.assert_array_equal(got_col.numpy(), ref_col)


def test_no_candidates_gives_zeros() -> None:
    a = torch.rand(10, 4)
    ok = torch.ones(10, dtype=torch.bool)
    rows, cols = massive_per_token(
        a, a.amax(1), ok, None, torch.full((10,), 4), 100.0, 1000.0, False
    )
    assert rows.shape == (10,) and cols.shape == (4,)
    assert rows.sum() == 0 and cols.sum() == 0
