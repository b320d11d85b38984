"""Batch-1 matrix-vector products that skip the weight columns of zeroed inputs (CPU paths).

A Linear layer computes ``y = W x + b`` with ``W`` of shape ``(out, in)``. When only the inputs
at the indices ``I`` are non-zero,

    y = sum_{i in I} x_i W[:, i] + b = (W^T)[I]^T x_I + b,

so only ``|I| / in`` of the weight has to be read. ``W[:, i]`` is strided in the row-major
``W``; :func:`transpose_weight` stores ``W^T`` once, contiguous, so that column ``i`` of ``W``
is the contiguous row ``i`` of ``W^T`` and the active columns are ``|I|`` contiguous rows.

Two input-sparse kernels read only those rows:

* ``bag``: ``torch.nn.functional.embedding_bag(I, W^T, per_sample_weights=x_I, mode="sum")``,
  a fused gather-scale-sum that accumulates ``x_i W^T[i]`` row by row without materialising
  the gathered weight;
* ``gather``: ``x_I @ W^T.index_select(0, I)``, which copies the active rows into a contiguous
  ``(|I|, out)`` block and then runs a dense product on it.

:func:`row_gemv` is the output-sparse dual used for a gated MLP's up projection under CHESS:
``y_j = W[j] . x`` only for the rows ``j`` of ``J`` (others 0), reading ``|J| / out`` of ``W``.

Masked-dense emulation (``F.linear(x * mask, W, b)``, :func:`masked_dense`) is the numerical
reference of all of these; it reads the whole weight and is never a speed-up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from actscope.errors import ActscopeError

KERNELS: tuple[str, ...] = ("bag", "gather")
"""Names of the input-sparse kernels, for options and manifests."""

GemvFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""``fn(x_active, idx, wt, bias) -> y`` with ``x_active = x[idx]`` and ``wt = W^T``."""

_OFFSETS: dict[tuple[torch.device, bool], Tensor] = {}


def _zero_offset(device: torch.device) -> Tensor:
    """The offsets ``[0]`` of a single bag, cached per device and inference mode (a tensor
    made under ``inference_mode`` must not reach autograd)."""
    key = (device, torch.is_inference_mode_enabled())
    off = _OFFSETS.get(key)
    if off is None:
        off = _OFFSETS[key] = torch.zeros(1, dtype=torch.long, device=device)
    return off


def transpose_weight(weight: Tensor) -> Tensor:
    """``W^T`` as a contiguous ``(in, out)`` tensor: column ``i`` of ``W`` becomes row ``i``."""
    return weight.detach().t().contiguous()


def active_indices(keep: Tensor) -> Tensor:
    """Indices (int64, ascending) of the True entries of a 1-D keep mask."""
    return keep.nonzero().squeeze(1)


def bag_gemv(x_active: Tensor, idx: Tensor, wt: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = sum_j x_active[j] * wt[idx[j]] (+ bias)`` by a fused gather-scale-sum; shape (out,)."""
    y = F.embedding_bag(
        idx,
        wt,
        _zero_offset(wt.device),
        mode="sum",
        per_sample_weights=x_active.to(wt.dtype),
    )[0]
    return y if bias is None else y + bias


def gather_gemv(x_active: Tensor, idx: Tensor, wt: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = x_active @ wt[idx] (+ bias)``: copy the active rows of ``W^T``, then one product."""
    y = x_active.to(wt.dtype) @ wt.index_select(0, idx)
    return y if bias is None else y + bias


_GEMV: dict[str, GemvFn] = {"bag": bag_gemv, "gather": gather_gemv}


def gemv_kernel(name: str) -> GemvFn:
    """The input-sparse kernel called ``name`` (one of :data:`KERNELS`)."""
    try:
        return _GEMV[name]
    except KeyError:
        raise ActscopeError(
            f"unknown sparse kernel '{name}'; choose one of {', '.join(KERNELS)}"
        ) from None


def row_gemv(x: Tensor, rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Output-sparse product: ``y[j] = W[j] . x (+ b[j])`` for ``j`` in ``rows``, else 0.

    ``weight`` is the row-major ``(out, in)`` weight, whose rows are already contiguous.
    """
    y = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    part = weight.index_select(0, rows) @ x.to(weight.dtype)
    if bias is not None:
        part = part + bias.index_select(0, rows)
    return y.index_copy_(0, rows, part)


def masked_dense(x: Tensor, keep: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Reference ``F.linear(x * keep, W, b)``: reads every weight column (accuracy only)."""
    return F.linear(x * keep.to(x.dtype), weight, bias)
