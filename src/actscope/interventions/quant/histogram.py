"""Signed activation histogram on the bfloat16 bit pattern: exact quantiles of x and |x|.

Bins. The bin of a float32 value ``v`` is its top 16 bits, ``p = bits(v) >> 16`` (0..65535):
the bfloat16 truncation of ``v``, sign included. For bfloat16 activations (actscope's default
dtype) every bin holds exactly one value, so order statistics, quantiles, minimum and maximum
read from the histogram are exact. For float32/float16 activations a bin covers one bfloat16
truncation interval (128 sub-bins per octave) and values are read at the bin midpoint:
relative error at most ``2^-8`` (0.39 %). NaN bins are never produced by finite activations;
non-finite inputs are not counted.

Order. Non-negative patterns ``0x0000..0x7F80`` increase with ``p``; negative patterns
``0x8000..0xFF80`` decrease with ``p``. Sorted order: ``0xFF80 ... 0x8000, 0x0000 ... 0x7F80``.

Quantiles follow ``torch.quantile``'s linear rule: with ``N`` values sorted,
``Q(q) = v_(i) + f (v_(i+1) - v_(i))``, ``i + f = q (N - 1)``. The ``|x|`` quantiles fold the
sign bit away (``p & 0x7FFF``). Histograms merge by adding counts (exact, any order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

NBINS = 1 << 16
_POS_END = 0x7F81  # +inf is 0x7F80; NaN patterns start at 0x7F81


def _pattern_values() -> np.ndarray:
    bits = (np.arange(NBINS, dtype=np.uint32) << 16).view(np.float32)
    with np.errstate(invalid="ignore"):  # NaN patterns
        return bits.astype(np.float64)


_VALUES = _pattern_values()
# ascending value order of the finite patterns: negatives from most negative, then non-negatives
_ORDER = np.concatenate([np.arange(0xFF80, 0x7FFF, -1), np.arange(0, _POS_END)])


def _upper_edges() -> np.ndarray:
    """Other end (in |v|) of each bin's truncation interval: the next pattern of the same sign."""
    nxt = (np.arange(NBINS, dtype=np.uint32) + 1) & 0xFFFF
    with np.errstate(invalid="ignore"):
        return ((nxt.astype(np.uint32) << 16).view(np.float32)).astype(np.float64)


_UPPER = _upper_edges()


class SignedHistogram:
    """Counts of activation values in the 65536 signed bfloat16 bins (see module docstring)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(NBINS, dtype=torch.long, device=device)
        self.exact = True

    def add(self, x: Tensor, valid: Tensor | None = None) -> None:
        """Count the entries of ``x`` (any shape) on real rows (``valid``: leading shape)."""
        exact = x.dtype == torch.bfloat16
        v = x.float()
        if valid is not None:
            v = torch.where(valid[..., None], v, torch.zeros((), device=v.device))
        idx = torch.bitwise_right_shift(v.view(torch.int32), 16).bitwise_and_(0xFFFF).reshape(-1)
        if v.device.type == "cpu":
            self.counts += torch.bincount(idx, minlength=NBINS)
        else:
            self.counts.scatter_add_(0, idx.long(), torch.ones_like(idx, dtype=torch.long))
        if valid is not None:  # padded entries were counted as +0.0
            self.counts[0] -= (~valid).sum() * x.shape[-1]
        self.exact = self.exact and exact

    def merge(self, other: SignedHistogram) -> None:
        self.counts += other.counts.to(self.counts.device)
        self.exact = self.exact and other.exact

    # read-out (host) ----------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        c = self.counts.cpu().numpy().copy()
        c[_POS_END:0x8000] = 0  # NaN patterns
        c[0xFF81:] = 0
        return c

    @property
    def n(self) -> int:
        return int(self.numpy().sum())

    def _bin_values(self, bins: np.ndarray) -> np.ndarray:
        lo = _VALUES[bins]
        if self.exact:
            return lo
        return np.where(lo == 0.0, 0.0, 0.5 * (lo + _UPPER[bins]))

    def quantiles(self, qs: Sequence[float]) -> np.ndarray:
        """Quantiles of the signed values (NaN when empty)."""
        counts = self.numpy()[_ORDER]
        return _interp(counts, _ORDER, qs, self._bin_values)

    def abs_quantiles(self, qs: Sequence[float]) -> np.ndarray:
        """Quantiles of ``|x|`` (NaN when empty)."""
        c = self.numpy()
        folded = c[:0x8000] + c[0x8000:]
        order = np.arange(0, _POS_END)
        return _interp(folded[order], order, qs, self._bin_values)

    def min_max(self) -> tuple[float, float]:
        """Smallest and largest counted value (NaN when empty)."""
        q = self.quantiles([0.0, 1.0])
        return float(q[0]), float(q[1])

    def abs_max(self) -> float:
        return float(self.abs_quantiles([1.0])[0])


def _interp(
    counts: np.ndarray,
    bins: np.ndarray,
    qs: Sequence[float],
    value_of: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    q = np.asarray(qs, dtype=np.float64)
    n = int(counts.sum())
    if n == 0:
        return np.full(q.shape, np.nan)
    cum = np.cumsum(counts)
    pos = q * (n - 1)
    r0 = np.floor(pos).astype(np.int64)
    r1 = np.minimum(r0 + 1, n - 1)
    v0 = value_of(bins[np.searchsorted(cum, r0, side="right")])
    v1 = value_of(bins[np.searchsorted(cum, r1, side="right")])
    return v0 + (pos - r0) * (v1 - v0)
