"""Sparse stand-ins for Linear layers: same outputs as masked dense, counted sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from actscope.errors import ActscopeError
from actscope.kernels import (
    GateObserver,
    MaskBox,
    RowSparseLinear,
    SparseLinear,
    linear_params,
    masked_dense,
)


def _keep_above(t: float):
    return lambda rows: rows.abs() > t


@pytest.mark.parametrize("kernel", ["bag", "gather"])
def test_single_row_uses_the_sparse_path_and_matches_masked_dense(kernel: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    sp = SparseLinear(lin, _keep_above(0.7), kernel=kernel)
    x = torch.randn(1, 1, 48)
    keep = x.abs() > 0.7
    torch.testing.assert_close(
        sp(x), masked_dense(x, keep, lin.weight, lin.bias), rtol=1e-5, atol=1e-5
    )
    assert sp.seen == 48 and sp.kept == int(keep.sum())
    assert sp.sparsity == pytest.approx(1 - int(keep.sum()) / 48)


def test_several_rows_fall_back_to_masked_dense() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(16, 8, bias=False)
    sp = SparseLinear(lin, _keep_above(0.5))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(sp(x), masked_dense(x, x.abs() > 0.5, lin.weight))
    assert sp.seen == 0  # only single-row calls are counted


def test_conv1d_weights_are_read_transposed() -> None:
    torch.manual_seed(2)
    conv = Conv1D(12, 10)  # nf=12 outputs, nx=10 inputs, weight (10, 12)
    w, b = linear_params(conv)
    assert w.shape == (12, 10)
    x = torch.randn(1, 10)
    torch.testing.assert_close(
        SparseLinear(conv, _keep_above(0.0))(x), conv(x), rtol=1e-5, atol=1e-5
    )
    assert b is not None


def test_gated_mlp_path_skips_up_rows_and_down_columns() -> None:
    torch.manual_seed(3)
    gate, up, down = (
        nn.Linear(8, 24, bias=False),
        nn.Linear(8, 24, bias=False),
        nn.Linear(24, 8, bias=False),
    )
    box = MaskBox()
    g_obs = GateObserver(gate, lambda g: torch.nn.functional.silu(g).abs() > 0.2, box)
    r_up = RowSparseLinear(up, box)
    s_down = SparseLinear(down, box=box)
    x = torch.randn(1, 1, 8)
    g = g_obs(x)
    keep = torch.nn.functional.silu(g).abs() > 0.2
    got = s_down(torch.nn.functional.silu(g) * r_up(x))
    ref = down((torch.nn.functional.silu(gate(x)) * up(x)) * keep)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert r_up.kept == s_down.kept == int(keep.sum())
    assert box.keep is None, "the down projection must clear the mask it used"
    with pytest.raises(ActscopeError, match="before the gate"):
        r_up(x)


def test_constructor_needs_one_mask_source() -> None:
    lin = nn.Linear(4, 4)
    with pytest.raises(ActscopeError, match="exactly one"):
        SparseLinear(lin)
    with pytest.raises(ActscopeError, match="not a Linear"):
        linear_params(nn.ReLU())
