"""Massive activations (Sun et al. 2024) with the per-token median, exact, per batch.

An entry ``a`` of token row ``t`` is massive when ``|a| > abs_threshold`` (100) and
``|a| >= ratio * median_t`` (ratio 1000), where ``median_t`` is the lower median of ``|x|``
over the counted entries of the row (the ``ceil(n/2)``-th smallest, ``torch.median``'s
convention). The layer-wide variant (median over every entry of the site) is read from the
histogram at the end (see :mod:`actscope.stats.site`).

Cost. An exact median per row is a selection over D values: on a CPU it costs about 30x a
plain reduction, far too much to run on every row of every site. A row can only hold a massive
entry when ``max_t > abs_threshold`` and ``max_t >= ratio * median_t``, so on CPU the medians
are computed only for rows with ``max_t > abs_threshold`` (found by reading a CPU tensor, which
is not a device synchronisation); when there are many, they are first narrowed to the rows
where at least ``ceil(n/2)`` entries are ``<= max_t / ratio`` (exactly the rows whose median
allows a massive entry, with a 1e-6 safety margin). On CUDA (``branch_free``) every row's
median is computed: no data-dependent shapes, no synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["massive_per_token"]

_NARROW_ABOVE = 64
"""Candidate rows beyond which the cheap median bound is applied first (CPU path)."""


def massive_per_token(
    a: Tensor,
    row_max: Tensor,
    row_ok: Tensor,
    entry_ok: Tensor | None,
    n_row: Tensor,
    abs_threshold: float,
    ratio: float,
    branch_free: bool,
    narrow_above: int = _NARROW_ABOVE,
) -> tuple[Tensor, Tensor]:
    """Massive entries per row ``(R,)`` and per channel ``(D,)`` (int64), per-token median.

    ``a``: (R, D) float32 |x|; ``row_max``: (R,) max over counted entries; ``row_ok``: rows
    to consider; ``entry_ok``: (R, D) counted entries or ``None`` (all entries of ok rows);
    ``n_row``: (R,) counted entries per row.
    """
    rows, dim = a.shape
    dev = a.device
    per_row = torch.zeros(rows, dtype=torch.long, device=dev)
    if branch_free:
        ok = row_ok[:, None] if entry_ok is None else entry_ok & row_ok[:, None]
        sub = torch.where(ok, a, float("nan"))
        hit = _criterion(sub, abs_threshold, ratio)
        return hit.sum(1), hit.sum(0)
    # CPU: shapes may depend on values (reading a CPU tensor does not stall a device).
    idx = torch.nonzero(row_ok & (row_max > abs_threshold)).squeeze(1)
    if idx.numel() == 0:
        return per_row, torch.zeros(dim, dtype=torch.long, device=dev)
    sub = a.index_select(0, idx)
    if entry_ok is not None:
        sub = torch.where(entry_ok.index_select(0, idx), sub, float("nan"))
    if idx.numel() > narrow_above:
        bound = row_max.index_select(0, idx) / ratio * (1 + 1e-6)
        k = (n_row.index_select(0, idx) + 1) // 2
        keep = torch.nonzero((sub <= bound[:, None]).sum(1) >= k).squeeze(1)
        idx, sub = idx.index_select(0, keep), sub.index_select(0, keep)
    hit = _criterion(sub, abs_threshold, ratio)
    per_row.index_copy_(0, idx, hit.sum(1))
    return per_row, hit.sum(0)


def _criterion(sub: Tensor, abs_threshold: float, ratio: float) -> Tensor:
    """``|a| > abs_threshold & |a| >= ratio * lower_median(row)``; NaN entries never count."""
    if sub.shape[0] == 0:
        return torch.zeros(sub.shape, dtype=torch.bool, device=sub.device)
    med = torch.nanmedian(sub, dim=1).values
    return (sub > abs_threshold) & (sub >= ratio * med[:, None])
