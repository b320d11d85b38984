"""Exact-count histogram of |a| on log-spaced bins read from the float bit pattern.

Bins. The bin of a value ``v = |a| >= 0`` (float32) is the top 15 bits of its IEEE-754 pattern
after the sign: ``b = bits(v) >> 16``, ``0 <= b < 32768``. That is exactly the bfloat16
truncation of ``v``: 8 exponent bits and 7 mantissa bits, i.e. 128 linear sub-bins in every
octave ``[2^e, 2^(e+1))``: log-spaced at the octave level (about 425 bins per decade) over the
whole float range, with no under- or overflow bin. Bin ``b`` covers
``[lo(b), lo(b + 1))`` with ``lo(b) = float32(b << 16)``. Bin 0 holds exact zeros (and float32
subnormals below 2^-133 ~ 9.2e-41, which bfloat16 and float16 inputs cannot produce).

Exact bins. For bfloat16 input every bin holds a single value, ``lo(b)``: quantiles, medians
and threshold counts computed from the histogram are then exact. The histogram remembers
whether every update was bfloat16 (``exact``).

Quantiles. ``quantile(q)`` follows ``torch.quantile``'s linear rule: with ``N`` counted
values and order statistics ``v_(0) <= ... <= v_(N-1)``, ``Q(q) = v_(i) + f (v_(i+1) - v_(i))``
where ``i + f = q (N - 1)``. Each order statistic is read from the histogram as its bin's
value (exact bins) or as the bin midpoint ``(lo(b) + lo(b+1)) / 2``. Error bound of the
midpoint rule: a value in a normal bin ``[2^e (1 + m/128), 2^e (1 + (m+1)/128))`` is at most
half a bin width, ``2^e / 256``, from the midpoint, so the relative error of every order
statistic, and of their interpolation, is at most ``2^-8 = 0.39 %`` (the ``10^(1/B) - 1``
figure of a log grid with ``B`` bins per decade becomes ``(2^(1/128) - 1) / 2`` here); below
2^-126 the error is at most 2^-134 in absolute terms. Exact for bfloat16 input.

Counting. On CPU ``torch.bincount`` (one pass, no scatter of ones); on CUDA a fixed-size
``scatter_add_`` because ``bincount`` reads the maximum index back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from actscope.stats.coords import StatsError
from actscope.stats.scratch import buffer

__all__ = ["NBINS", "REL_ERROR", "AbsHistogram", "bin_index", "bin_lower", "snap_to_edge"]

NBINS = 1 << 15
_INF_BIN = 0x7F80
REL_ERROR = 2.0**-8
"""Relative error bound of quantiles read with the midpoint rule (non-bfloat16 input)."""


def bin_index(a: Tensor, out: Tensor | None = None) -> Tensor:
    """Bin of every element of a non-negative float32 tensor: ``bits(a) >> 16`` (int32)."""
    return torch.bitwise_right_shift(a.view(torch.int32), 16, out=out)


def bin_lower(b: np.ndarray | int) -> np.ndarray:
    """Lower edge ``lo(b)`` of bins ``b`` (float64; ``inf`` from ``b = 0x7F80`` on)."""
    b = np.minimum(np.asarray(b, dtype=np.int64), _INF_BIN)
    return (b << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def snap_to_edge(value: float) -> float:
    """The largest bin edge ``<= value`` (``value`` truncated to bfloat16), for exact counts."""
    if not value >= 0 or not np.isfinite(value):
        raise StatsError(f"a histogram threshold must be finite and >= 0, got {value}")
    bits = np.array([value], dtype=np.float32).view(np.uint32)[0] >> 16
    return float(bin_lower(int(bits)))


class AbsHistogram:
    """Counts of |a| in the 32768 bit-pattern bins described in the module docstring."""

    def __init__(self, device: torch.device) -> None:
        self.counts = torch.zeros(NBINS, dtype=torch.long, device=device)
        self.exact = True

    def add(
        self, a: Tensor, excluded: Tensor | int, exact: bool, work: Tensor | None = None
    ) -> None:
        """Count the elements of ``a`` (>= 0, any shape and float dtype) minus ``excluded`` zeros.

        Padding rows and non-finite entries are passed in as zeros and removed from bin 0
        afterwards (``excluded`` may be a device tensor: no synchronisation). ``exact``: the
        values are bfloat16 numbers (one value per bin). ``work``: an int32 tensor of ``a``'s
        shape to hold the bin indices (default: a reused buffer).
        """
        a = a if a.dtype == torch.float32 else a.float()
        if work is None:
            work = buffer("bins", a.shape, torch.int32, a.device)
        idx = bin_index(a, out=work).reshape(-1)
        if a.device.type == "cpu":
            self.counts += torch.bincount(idx, minlength=NBINS)
        else:
            self.counts.scatter_add_(0, idx.long(), torch.ones_like(idx, dtype=torch.long))
        self.counts[0] -= excluded
        self.exact = self.exact and exact

    def merge(self, other: AbsHistogram) -> None:
        """Add the counts of ``other`` (exact: both histograms had exact bins)."""
        self.counts += other.counts.to(self.counts.device)
        self.exact = self.exact and other.exact

    # ---- read-out, on host numpy copies -------------------------------------------------

    def numpy(self) -> np.ndarray:
        """The counts as an int64 numpy array (one host transfer)."""
        return self.counts.cpu().numpy()

    @staticmethod
    def values(bins: np.ndarray, exact: bool) -> np.ndarray:
        """Representative value of each bin: ``lo(b)`` if exact, else the bin midpoint."""
        lo = bin_lower(bins)
        if exact:
            return lo
        mid = 0.5 * (lo + bin_lower(np.asarray(bins) + 1))
        return np.where(np.asarray(bins) == 0, 0.0, mid)

    @staticmethod
    def order_statistics(counts: np.ndarray, ranks: np.ndarray, exact: bool) -> np.ndarray:
        """Values ``v_(r)`` (0-based ranks) read from the histogram, NaN when empty."""
        cum = np.cumsum(counts)
        if cum.size == 0 or cum[-1] == 0:
            return np.full(np.shape(ranks), np.nan)
        bins = np.searchsorted(cum, np.asarray(ranks, dtype=np.int64), side="right")
        return AbsHistogram.values(bins, exact)

    @staticmethod
    def quantiles(counts: np.ndarray, qs: Sequence[float], exact: bool) -> np.ndarray:
        """``torch.quantile``-convention quantiles of the counted values (see module doc)."""
        q = np.asarray(qs, dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise StatsError(f"quantiles must lie in [0, 1], got {list(qs)}")
        n = int(counts.sum())
        if n == 0:
            return np.full(q.shape, np.nan)
        pos = q * (n - 1)
        lo_rank = np.floor(pos).astype(np.int64)
        hi_rank = np.minimum(lo_rank + 1, n - 1)
        v_lo = AbsHistogram.order_statistics(counts, lo_rank, exact)
        v_hi = AbsHistogram.order_statistics(counts, hi_rank, exact)
        return v_lo + (pos - lo_rank) * (v_hi - v_lo)

    @staticmethod
    def lower_median_bin(counts: np.ndarray) -> int:
        """Bin of the lower median ``v_(ceil(N/2) - 1)``; -1 when empty."""
        n = int(counts.sum())
        if n == 0:
            return -1
        return int(np.searchsorted(np.cumsum(counts), (n + 1) // 2 - 1, side="right"))

    @staticmethod
    def count_below(counts: np.ndarray, edge: float) -> int:
        """Number of values ``< edge``; exact when ``edge`` is a bin edge (see snap_to_edge)."""
        b = int(np.array([edge], dtype=np.float32).view(np.uint32)[0] >> 16)
        return int(counts[:b].sum())
