"""One batch made ready for the statistics: float32, padding and non-finite entries zeroed.

:func:`prepare` converts ``x`` to float32 once (multiplying by the 0/1 row mask, so padding
rows become exact zeros in the same pass), then derives everything the groups share: ``|x|``,
``x^2``, per-row sums, maxima and minima over the counted entries, and the counts.

Counted entries: the entries of valid rows that are finite. Non-finite entries are set to 0 in
``xf`` (neutral for sums and for max |x|) and excluded explicitly where 0 is not neutral
(signed min/max, medians, top-K, histogram bin 0). On CPU, a batch whose row sums are all
finite has no NaN/Inf (a NaN or Inf entry makes its row sum non-finite) and skips the
elementwise masks; a float32 overflow of a row sum only sends the batch down the general path,
which is always correct. With ``branch_free`` (the default on CUDA) the general path always
runs and nothing is read back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from actscope.stats.scratch import buffer

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """Shared per-batch quantities; ``(R, D)`` tensors may be reused buffers (see scratch)."""

    xf: Tensor  # (R, D) float32, 0 outside counted entries
    a: Tensor  # (R, D) |xf|
    sq: Tensor | None  # (R, D) xf^2 when requested (buffer "work1": consumers may overwrite it)
    w: Tensor  # (R,) float32 1/0 valid rows
    valid: Tensor  # (R,) bool
    entry_ok: Tensor | None  # (R, D) counted entries; None: every entry of a valid row
    n_row: Tensor  # (R,) int64 counted entries per row
    n_col: Tensor  # (D,) int64 counted entries per channel
    s1: Tensor  # (R,) float32 row sums of x
    rmax: Tensor  # (R,) max of x over counted entries; meaningless where not row_ok
    rmin: Tensor  # (R,) min of x over counted entries; meaningless where not row_ok
    row_max: Tensor  # (R,) max |x| over counted entries; meaningless where not row_ok
    row_ok: Tensor  # (R,) valid rows with at least one counted entry
    nonfinite: Tensor | None  # (3,) int64 NaN, +Inf, -Inf in valid rows; None: all finite
    branch_free: bool


def prepare(x: Tensor, valid: Tensor, branch_free: bool, need_sq: bool) -> Prepared:
    """Build :class:`Prepared` for one ``(R, D)`` batch (see module docstring)."""
    rows, dim = x.shape
    dev = x.device
    w = valid.to(torch.float32)
    xf = buffer("xf", (rows, dim), torch.float32, dev)
    torch.mul(x if x.dtype != torch.float64 else x.float(), w[:, None], out=xf)
    s1 = xf.sum(1)
    entry_ok: Tensor | None = None
    nonfinite: Tensor | None = None
    if branch_free or not bool(torch.isfinite(s1).all()):
        fin = torch.isfinite(xf)
        entry_ok = fin & valid[:, None]
        bad = valid[:, None] & ~fin
        nonfinite = torch.stack(
            [(bad & torch.isnan(xf)).sum(), (bad & (xf > 0)).sum(), (bad & (xf < 0)).sum()]
        )
        xf.masked_fill_(~entry_ok, 0.0)
        n_row = entry_ok.sum(1)
        n_col = entry_ok.sum(0)
        s1 = xf.sum(1)
        rmax = torch.where(entry_ok, xf, -math.inf).amax(1)
        rmin = torch.where(entry_ok, xf, math.inf).amin(1)
    else:
        n_row = valid.long() * dim
        n_col = valid.sum().expand(dim)
        rmax, rmin = xf.amax(1), xf.amin(1)
    a = torch.abs(xf, out=buffer("abs", (rows, dim), torch.float32, dev))
    sq = (
        torch.mul(xf, xf, out=buffer("work1", (rows, dim), torch.float32, dev)) if need_sq else None
    )
    return Prepared(
        xf=xf,
        a=a,
        sq=sq,
        w=w,
        valid=valid,
        entry_ok=entry_ok,
        n_row=n_row,
        n_col=n_col,
        s1=s1,
        rmax=rmax,
        rmin=rmin,
        row_max=torch.maximum(rmax, -rmin),
        row_ok=valid & (n_row > 0),
        nonfinite=nonfinite,
        branch_free=branch_free,
    )
