"""Stand-ins for Linear layers in batch-1 decoding that read only the weights they need.

:class:`SparseLinear` replaces a Linear whose input is sparsified: for a single input row it
keeps the entries chosen by ``keep(x)`` and calls an input-sparse kernel of
:mod:`.sparse_gemv` (``y = W[:, I] x_I + b``); for several rows (a prefill) it falls back to
masked-dense ``F.linear(x * keep, W, b)`` with the same mask, so outputs match the
masked-dense emulation in both cases.

A gated MLP under CHESS decides its intermediate mask from the gate: :class:`GateObserver`
wraps the gate projection (dense) and stores the keep mask in a :class:`MaskBox`;
:class:`RowSparseLinear` computes only the kept rows of the up projection and the down
projection's :class:`SparseLinear` reads the same box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actscope.errors import ActscopeError
from actscope.kernels.sparse_gemv import (
    active_indices,
    gemv_kernel,
    masked_dense,
    row_gemv,
    transpose_weight,
)

KeepFn = Callable[[Tensor], Tensor]
"""``keep(x)`` for ``x`` of shape ``(rows, width)``: a bool tensor of the same shape."""


def linear_params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(W, b)`` of a Linear-like module with ``W`` shaped ``(out, in)``.

    Handles ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), whose weight is stored
    ``(in, out)``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ActscopeError(f"{type(module).__name__} is not a Linear layer (no 2-D weight)")
    bias = getattr(module, "bias", None)
    bias = bias.detach() if isinstance(bias, Tensor) else None
    if isinstance(module, nn.Linear):
        return weight.detach(), bias
    if type(module).__name__ == "Conv1D":
        return weight.detach().t(), bias
    raise ActscopeError(f"unsupported projection type {type(module).__name__}")


@dataclass
class MaskBox:
    """The keep mask of the last gate call, shared by the up and down projections."""

    keep: Tensor | None = None
    idx: Tensor | None = None

    def set(self, keep: Tensor) -> None:
        self.keep = keep
        self.idx = active_indices(keep[0]) if keep.shape[0] == 1 else None

    def take(self, rows: int, who: str) -> tuple[Tensor, Tensor | None]:
        if self.keep is None or self.keep.shape[0] != rows:
            raise ActscopeError(
                f"sparse decode: {who} ran before the gate projection set its mask "
                "(the MLP must call gate_proj first)"
            )
        return self.keep, self.idx

    def clear(self) -> None:
        self.keep = None
        self.idx = None


class _Counted(nn.Module):
    """Counts kept and seen input entries of single-row calls (for realised sparsity)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = 0
        self.seen = 0

    @property
    def sparsity(self) -> float:
        """Fraction of entries skipped over the single-row calls so far (NaN before any)."""
        return 1.0 - self.kept / self.seen if self.seen else float("nan")


class SparseLinear(_Counted):
    """``y = W[:, I] x_I + b`` for one row (kernel ``bag`` or ``gather``); masked dense else.

    ``keep`` chooses the entries from the input; with ``box`` the mask set by a
    :class:`GateObserver` is used instead (and cleared after use).
    """

    def __init__(
        self,
        linear: nn.Module,
        keep: KeepFn | None = None,
        *,
        box: MaskBox | None = None,
        kernel: str = "bag",
    ) -> None:
        super().__init__()
        if (keep is None) == (box is None):
            raise ActscopeError("SparseLinear needs exactly one of keep= and box=")
        self.weight, self.bias = linear_params(linear)
        self.wt = transpose_weight(self.weight)
        self.out_features, self.in_features = self.weight.shape
        self.keep_fn = keep
        self.box = box
        self.kernel = kernel
        self.gemv = gemv_kernel(kernel)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if self.box is not None:
            keep, idx = self.box.take(rows.shape[0], "down projection")
            self.box.clear()
        else:
            keep = self.keep_fn(rows)  # type: ignore[misc]
            idx = active_indices(keep[0]) if rows.shape[0] == 1 else None
        if idx is not None:
            y = self.gemv(rows[0].index_select(0, idx), idx, self.wt, self.bias).unsqueeze(0)
            self.kept += int(idx.numel())
            self.seen += self.in_features
        else:
            y = masked_dense(rows, keep, self.weight, self.bias)
        return y.reshape(*lead, self.out_features)


class GateObserver(nn.Module):
    """A dense gate projection that stores ``keep(gate_output)`` in ``box`` for the MLP."""

    def __init__(self, linear: nn.Module, keep: KeepFn, box: MaskBox) -> None:
        super().__init__()
        self.linear = linear
        self.keep_fn = keep
        self.box = box

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        self.box.set(self.keep_fn(y.reshape(-1, y.shape[-1])))
        return y


class RowSparseLinear(_Counted):
    """Up projection under CHESS: only the rows kept by the gate's mask are computed."""

    def __init__(self, linear: nn.Module, box: MaskBox) -> None:
        super().__init__()
        self.weight, self.bias = linear_params(linear)
        self.weight = self.weight.contiguous()
        self.out_features, self.in_features = self.weight.shape
        self.box = box

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        keep, idx = self.box.take(rows.shape[0], "up projection")
        if idx is not None:
            y = row_gemv(rows[0], idx, self.weight, self.bias).unsqueeze(0)
            self.kept += int(idx.numel())
            self.seen += self.out_features
        else:
            y = torch.nn.functional.linear(rows, self.weight, self.bias) * keep.to(rows.dtype)
        return y.reshape(*lead, self.out_features)
