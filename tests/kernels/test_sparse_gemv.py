"""Sparse GEMV kernels against the masked-dense product they stand in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actscope.errors import ActscopeError
from actscope.kernels import (
    active_indices,
    bag_gemv,
    gather_gemv,
    gemv_kernel,
    masked_dense,
    row_gemv,
    transpose_weight,
)


def _case(dtype: torch.dtype, d_in: int = 96, d_out: int = 40, keep: int = 37, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g).to(dtype)
    b = torch.randn(d_out, generator=g).to(dtype)
    x = torch.randn(d_in, generator=g).to(dtype)
    idx = torch.randperm(d_in, generator=g)[:keep].sort().values
    mask = torch.zeros(d_in, dtype=torch.bool)
    mask[idx] = True
    return w, b, x, idx, mask


@pytest.mark.parametrize("kernel", [bag_gemv, gather_gemv])
@pytest.mark.parametrize("with_bias", [False, True])
def test_input_sparse_kernels_match_masked_dense_fp32(kernel, with_bias: bool) -> None:
    w, b, x, idx, mask = _case(torch.float32)
    bias = b if with_bias else None
    ref = (w.double() @ (x.double() * mask)) + (0 if bias is None else bias.double())
    got = kernel(x[idx], idx, transpose_weight(w), bias)
    assert got.shape == (w.shape[0],)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, masked_dense(x, mask, w, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bag", "gather"])
def test_bf16_kernels_are_as_accurate_as_dense_bf16(name: str) -> None:
    w, _, x, idx, mask = _case(torch.bfloat16, d_in=512, d_out=256, keep=200)
    exact = w.double() @ (x.double() * mask)
    dense_err = (F.linear(x * mask, w).double() - exact).abs().max()
    sparse_err = (
        (gemv_kernel(name)(x[idx], idx, transpose_weight(w), None).double() - exact).abs().max()
    )
    assert sparse_err <= 2 * dense_err + 1e-3


def test_empty_active_set_gives_the_bias() -> None:
    w, b, x, _, _ = _case(torch.float32)
    none = torch.zeros(0, dtype=torch.long)
    for name in ("bag", "gather"):
        torch.testing.assert_close(gemv_kernel(name)(x[none], none, transpose_weight(w), b), b)


def test_row_gemv_computes_only_the_chosen_rows() -> None:
    w, b, x, _, _ = _case(torch.float32)
    rows = torch.tensor([0, 3, 17, 39])
    got = row_gemv(x, rows, w, b)
    full = F.linear(x, w, b)
    torch.testing.assert_close(got[rows], full[rows])
    others = torch.ones(w.shape[0], dtype=torch.bool)
    others[rows] = False
    assert torch.all(got[others] == 0)


def test_transpose_weight_makes_columns_contiguous_rows() -> None:
    w = torch.arange(12.0).reshape(3, 4)
    wt = transpose_weight(w)
    assert wt.is_contiguous() and wt.shape == (4, 3)
    assert torch.equal(wt[2], w[:, 2])


def test_active_indices_and_unknown_kernel() -> None:
    assert active_indices(torch.tensor([False, True, True, False, True])).tolist() == [1, 2, 4]
    with pytest.raises(ActscopeError, match="unknown sparse kernel"):
        gemv_kernel("fused")


def test_bag_kernel_works_in_and_out_of_inference_mode() -> None:
    w, _, x, idx, _ = _case(torch.float32)
    wt = transpose_weight(w)
    with torch.inference_mode():
        a = bag_gemv(x[idx], idx, wt)
    xg = x.clone().requires_grad_(True)
    b = bag_gemv(xg[idx], idx, wt)  # the cached offsets must not be an inference tensor
    b.sum().backward()
    torch.testing.assert_close(a, b.detach())
    assert xg.grad is not None and torch.all(xg.grad[idx] != 0)
