"""Fake quantization: round a tensor onto a low-bit grid and back, on its own device.

Grids (``b`` bits, scale ``s``, round = round half to even, as ``torch.round``):

* symmetric integer: ``qmax = 2^(b-1) - 1``, ``s = c / qmax`` with ``c = max(-lo, hi)``,
  ``Q(x) = clamp(round(x / s), -qmax - 1, qmax) * s``;
* asymmetric integer: ``s = (hi - lo) / (2^b - 1)``, ``z = -round(lo / s)``,
  ``Q(x) = (clamp(round(x / s) + z, 0, 2^b - 1) - z) * s``; the range is widened to include 0
  (``lo <= 0 <= hi``) so that 0 (padding, ReLU zeros) is exact;
* fp8 E4M3: ``s = c / 448``, ``Q(x) = e4m3(clamp(x / s, -448, 448)) * s`` (round to nearest
  even of the E4M3 grid, subnormals included).

A scale is floored at 1e-30, so an all-zero block stays zero. An entry is
*clipped* when the clamp changes its rounded code. The range ``(lo, hi)`` of each block comes
from the block itself (``max``, or exact percentiles computed by sorting the block), from a
static calibrated range (per-tensor), and is multiplied by ``ratio`` (MSE-searched clipping).
Blocks are described in :mod:`actscope.interventions.quant.spec`. Everything is computed in
float32 on the tensor's device, with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from actscope.interventions.quant.spec import FP8_MAX, QuantSpec


@dataclass(frozen=True)
class Range:
    """A static clipping range ``[lo, hi]`` (symmetric grids use ``c = max(-lo, hi)``)."""

    lo: float
    hi: float

    @classmethod
    def symmetric(cls, c: float) -> Range:
        return cls(-float(c), float(c))


def sorted_quantiles(srt: Tensor, n: Tensor, qs: Sequence[float]) -> list[Tensor]:
    """Quantiles read from blocks sorted along the last dim with ``n`` leading real values.

    With ``v_(0) <= ... <= v_(n-1)`` the real values of a block, quantile ``q`` is
    ``v_(i) + f (v_(i+1) - v_(i))`` with ``i + f = q (n - 1)`` (``torch.quantile``'s rule); an
    empty block gives 0. Results have the shape of ``srt[..., :1]``.
    """
    last = (n - 1).clamp(min=0)
    out = []
    for q in qs:
        pos = q * last.to(torch.float64)
        i0 = pos.floor().long()
        i1 = torch.minimum(i0 + 1, last)
        frac = (pos - i0).to(srt.dtype)
        v0 = srt.gather(-1, i0)
        v1 = srt.gather(-1, i1)
        val = v0 + frac * (v1 - v0)
        out.append(torch.where(n > 0, val, torch.zeros_like(val)))
    return out


def exact_quantiles(blocks: Tensor, qs: Sequence[float]) -> list[Tensor]:
    """Exact quantiles of every block (last dim), NaN entries left out (one sort per block)."""
    srt = torch.sort(blocks, dim=-1).values  # NaN sorts last
    n = (~torch.isnan(blocks)).sum(dim=-1, keepdim=True)
    return sorted_quantiles(srt, n, qs)


class BlockView:
    """A 2-D tensor ``(N, D)`` cut into the blocks one scale covers, with cached block stats.

    ``valid`` (N,) marks real token rows: padding rows are zeroed (never clipped, no effect on
    max-based ranges) and left out of percentiles. Block layout by granularity: ``tensor``
    ``(1, N*D)``, ``token`` ``(N, D)``, ``channel`` ``(D, N)``, ``group`` ``(N, G, g)`` with
    zero padding of the last group.
    """

    def __init__(
        self, x2d: Tensor, granularity: str, group_size: int = 128, valid: Tensor | None = None
    ) -> None:
        x = x2d.float()
        if valid is not None:
            x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        self.n, self.d = x.shape
        self.granularity = granularity
        self.group_size = group_size
        self.valid = valid
        self.x = x
        self.pad = (-self.d) % group_size if granularity == "group" else 0
        if granularity == "tensor":
            self.blocks = x.reshape(1, -1)
        elif granularity == "token":
            self.blocks = x
        elif granularity == "channel":
            self.blocks = x.t()
        else:
            xp = F.pad(x, (0, self.pad)) if self.pad else x
            self.blocks = xp.view(self.n, -1, group_size)
        self._cache: dict[tuple[str, float], Tensor] = {}

    def unblock(self, qb: Tensor) -> Tensor:
        """Inverse of the block layout: ``(N, D)``."""
        if self.granularity == "tensor":
            return qb.reshape(self.n, self.d)
        if self.granularity == "token":
            return qb
        if self.granularity == "channel":
            return qb.t()
        return qb.reshape(self.n, -1)[:, : self.d]

    def _real(self) -> Tensor | None:
        """Bool mask of real entries in block layout, or None when every entry is real."""
        if self.valid is None and not self.pad:
            return None
        rows = (
            self.valid
            if self.valid is not None
            else torch.ones(self.n, dtype=torch.bool, device=self.x.device)
        )
        real = rows[:, None].expand(self.n, self.d)
        if self.granularity == "tensor":
            return real.reshape(1, -1)
        if self.granularity == "token":
            return real
        if self.granularity == "channel":
            return real.t()
        realp = F.pad(real, (0, self.pad), value=False) if self.pad else real
        return realp.reshape(self.n, -1, self.group_size)

    def _sorted(self, signed: bool) -> tuple[Tensor, Tensor]:
        """Blocks (|x| or x) sorted along the last dim, padding last, and real counts."""
        key = ("sorted", float(signed))
        if key not in self._cache:
            src = self.blocks if signed else self.blocks.abs()
            real = self._real()
            if real is None:
                n = torch.full((*src.shape[:-1], 1), src.shape[-1], device=src.device)
            else:
                src = torch.where(real, src, torch.full((), float("nan"), device=src.device))
                n = real.sum(dim=-1, keepdim=True)
            self._cache[key] = torch.sort(src, dim=-1).values
            self._cache[("n", float(signed))] = n
        return self._cache[key], self._cache[("n", float(signed))]

    def stat(self, name: str, q: float = 1.0) -> Tensor:
        """Cached block statistic: ``absmax``, ``min``, ``max``, ``absq`` or ``q`` (quantile)."""
        key = (name, q)
        if key in self._cache:
            return self._cache[key]
        b = self.blocks
        if name == "absmax":
            val = b.abs().amax(dim=-1, keepdim=True)
        elif name == "min":
            val = b.amin(dim=-1, keepdim=True)
        elif name == "max":
            val = b.amax(dim=-1, keepdim=True)
        elif name in ("absq", "q"):
            srt, n = self._sorted(signed=name == "q")
            val = sorted_quantiles(srt, n, [q])[0]
        else:
            raise KeyError(name)
        self._cache[key] = val
        return val

    def block_range(self, spec: QuantSpec, ratio: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` of every block for ``spec``'s clip rule, times ``ratio``."""
        p = spec.percentile
        if spec.symmetric:
            c = self.stat("absmax") if p >= 1.0 else self.stat("absq", p)
            c = c * ratio if ratio != 1.0 else c
            return -c, c
        if p >= 1.0:
            lo, hi = self.stat("min"), self.stat("max")
        else:
            lo, hi = self.stat("q", 1.0 - p), self.stat("q", p)
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        if ratio != 1.0:
            lo, hi = lo * ratio, hi * ratio
        return lo, hi


_TINY = 1e-30
"""Floor of a scale: an all-zero block quantizes to zeros instead of dividing by 0."""


def _grid_params(
    lo: Tensor | float, hi: Tensor | float, spec: QuantSpec
) -> tuple[Tensor | float, Tensor | float]:
    """Scale ``s`` and zero point ``z`` (0 for symmetric grids) of the grid covering the range.

    Python floats in, Python floats out (static ranges: no tensor is created); tensors in,
    tensors out (per-block ranges, on their device).
    """
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
        if spec.symmetric:
            top = FP8_MAX if spec.is_float else float(spec.qmax)
            return (torch.maximum(-lo_t, hi_t) / top).clamp_(min=_TINY), 0.0
        s = ((hi_t.clamp(min=0.0) - lo_t.clamp(max=0.0)) / spec.levels).clamp_(min=_TINY)
        return s, torch.round(-lo_t.clamp(max=0.0) / s)
    if spec.symmetric:
        top = FP8_MAX if spec.is_float else float(spec.qmax)
        return max(max(-lo, hi) / top, _TINY), 0.0
    lo_f, hi_f = min(lo, 0.0), max(hi, 0.0)
    s_f = max((hi_f - lo_f) / spec.levels, _TINY)
    return s_f, float(round(-lo_f / s_f))  # round half to even, like torch.round


def quantize_range(
    x: Tensor,
    lo: Tensor | float,
    hi: Tensor | float,
    spec: QuantSpec,
    count_clipped: bool = True,
) -> tuple[Tensor, Tensor]:
    """``Q(x)`` on the grid covering ``[lo, hi]`` (broadcast) and the number of clipped entries.

    ``x`` must be float32; returns float32 and a 0-dim int64 count, both on ``x.device``.
    With ``count_clipped=False`` the count is not computed (returned as 0): for ranges that
    contain every entry of their block, where nothing can be clipped.
    """
    s, z0 = _grid_params(lo, hi, spec)
    y = x / s
    if spec.symmetric:
        top = FP8_MAX if spec.is_float else float(spec.qmax)
        bottom = -FP8_MAX if spec.is_float else -float(spec.qmax) - 1.0
        if not spec.is_float:
            y.round_()
        z = y.clamp(bottom, top)
        clipped = (z != y).sum() if count_clipped else _zero_count(x)
        if spec.is_float:
            z = z.to(torch.float8_e4m3fn).to(x.dtype)
        return z.mul_(s), clipped
    levels = float(spec.levels)
    y.round_().add_(z0)
    q = y.clamp(0.0, levels)
    clipped = (q != y).sum() if count_clipped else _zero_count(x)
    return q.sub_(z0).mul_(s), clipped


def _zero_count(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.long, device=x.device)


def quantize_view(
    view: BlockView, spec: QuantSpec, static: Range | None = None, ratio: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Fake-quantize the tensor behind ``view`` (``(N, D)`` float32) and count clipped entries.

    Per-tensor granularity uses ``static`` when given (the calibrated range, already clipped);
    otherwise each block's range follows ``spec.clip`` times ``ratio``.
    """
    if spec.granularity == "tensor" and static is not None:
        return quantize_range(view.x, static.lo, static.hi, spec)
    lo, hi = view.block_range(spec, ratio)
    # a symmetric block scaled to its own max holds every entry: nothing can be clipped (an
    # asymmetric one can lose one code to the rounding of its zero point, so it is counted)
    exact_cover = spec.symmetric and spec.percentile >= 1.0 and ratio >= 1.0
    qb, clipped = quantize_range(view.blocks, lo, hi, spec, count_clipped=not exact_cover)
    return view.unblock(qb), clipped


def fake_quantize(
    x: Tensor,
    spec: QuantSpec,
    *,
    static: Range | None = None,
    ratio: float = 1.0,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``Q(x)`` (float32, shape of ``x``) and the number of clipped entries (0-dim int64).

    The last dimension of ``x`` is the channel dimension; leading dimensions are tokens.
    ``valid`` (leading shape, bool) marks real tokens (see :class:`BlockView`).
    """
    shape = x.shape
    x2d = x.reshape(-1, shape[-1])
    v = None if valid is None else valid.reshape(-1)
    view = BlockView(x2d, spec.granularity, spec.group_size, v)
    q, clipped = quantize_view(view, spec, static, ratio)
    return q.reshape(shape), clipped
