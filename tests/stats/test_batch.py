"""Tests of actscope.stats.batch: float32 conversion, padding and non-finite handling."""

from __future__ import annotations

import math

import numpy as np
import torch

from actscope.stats.batch import prepare


def _x() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    valid = torch.tensor([True] * 6 + [False] * 2)
    return x, valid


def test_fast_and_general_paths_agree_on_clean_input() -> None:
    x, valid = _x()
    x[6:] = 1e30  # padding rows with garbage
    fast = prepare(x.bfloat16(), valid, branch_free=False, need_sq=True)
    assert fast.entry_ok is None and fast.nonfinite is None
    fields = ("xf", "a", "sq", "n_row", "n_col", "s1", "rmax", "rmin", "row_max", "row_ok")
    snap = {f: getattr(fast, f).clone() for f in fields}  # buffers are reused below
    general = prepare(x.bfloat16(), valid, branch_free=True, need_sq=True)
    assert general.nonfinite.tolist() == [0, 0, 0]
    for f in fields:
        got = getattr(general, f)
        if f in ("rmax", "rmin", "row_max"):  # defined on row_ok rows only
            got, snap[f] = got[valid], snap[f][valid]
        assert torch.equal(snap[f], got), f
    assert snap["xf"][6:].abs().sum() == 0
    assert snap["n_row"].tolist() == [6] * 6 + [0, 0]


def test_nonfinite_entries_are_counted_and_zeroed() -> None:
    x, valid = _x()
    x[0, 1] = math.nan
    x[1, 2] = math.inf
    x[1, 3] = -math.inf
    x[2, :] = math.nan  # a row with no counted entry
    x[7, 0] = math.nan  # in a padding row: not counted
    b = prepare(x, valid, branch_free=False, need_sq=False)
    assert b.nonfinite.tolist() == [7, 1, 1]
    assert torch.isfinite(b.xf).all() and b.sq is None
    assert b.n_row.tolist() == [5, 4, 0, 6, 6, 6, 0, 0]
    assert b.n_col.tolist() == [5, 4, 4, 4, 5, 5]
    assert b.row_ok.tolist() == [True, True, False, True, True, True, False, False]
    clean = x[3].numpy()
    assert b.rmax[3] == clean.max() and b.rmin[3] == clean.min()
    assert b.row_max[1] == np.abs(np.delete(x[1].numpy(), [2, 3])).max()
