"""Kurtosis per token (over channels) and central moments per channel (over tokens).

Per token (Outlier-Safe Pre-Training definition). For a token row ``x`` with ``n`` counted
entries, ``mu = sum(x)/n``, population variance ``var = sum(x^2)/n - mu^2`` and
``k_t = max(0, mean(x^4) / var^2 - 3)``. The numerator is the raw fourth moment, as in the OSP
definition, not the central one; the two agree when the token mean is 0. Rows with
``var = 0`` or a non-finite ratio (float32 ``x^4`` overflows above |x| ~ 1.8e9) are left out
of the average. Row sums come in as float32 (one per row), the arithmetic is float64.

Per channel. The state holds, per channel, ``n`` and the power sums ``S_p = sum((x - K)^p)``,
p = 1..4, in float64 about a fixed reference ``K`` (the mean of the channel in the first batch
that has entries in it). Each batch is first centred on its own float32 mean ``m``:
``P_p = sum((x - m)^p)`` in float32 (centred values, so no cancellation however large the
mean, and the same numbers whichever way the stream is cut), then moved to ``K`` exactly in
real arithmetic with the binomial shift ``S_p = sum_j C(p, j) (m - K)^(p-j) P_j``, in float64.
States merge with the same shift, so a merged state equals one pass to float64 rounding. At
the end, with ``c = S_1/n``: ``M2 = S_2 - n c^2``, ``M4 = S_4 - 4c S_3 + 6c^2 S_2 - 3n c^4``;
excess kurtosis ``n M4 / M2^2 - 3`` (not clamped; NaN where ``M2 = 0`` or ``n < 2``).
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch
from torch import Tensor

from actscope.stats.scratch import buffer

__all__ = ["ChannelMoments", "token_kurtosis"]


def token_kurtosis(n: Tensor, s1: Tensor, s2: Tensor, s4: Tensor) -> tuple[Tensor, Tensor]:
    """OSP kurtosis ``k_t`` of every row and whether it is defined (float64, bool).

    ``n``: counted entries per row; ``s1, s2, s4``: per-row sums of x, x^2, x^4.
    """
    m = torch.stack([s1, s2, s4]).double() / n.clamp(min=1)
    var = torch.addcmul(m[1], m[0], m[0], value=-1.0)
    ratio = m[2] / (var * var)
    ok = (var > 0) & torch.isfinite(ratio)
    return torch.where(ok, (ratio - 3.0).clamp_(min=0.0), 0.0), ok


def _shift_operator() -> Tensor:
    """(25, 5) float64 matrix ``A`` with ``(A @ P)[5k + p] = C(p, p-k) P_{p-k}`` (0 if k > p)."""
    a = torch.zeros(25, 5, dtype=torch.float64)
    for k in range(5):
        for p in range(k, 5):
            a[5 * k + p, p - k] = comb(p, p - k)
    return a


_SHIFT = _shift_operator()


def shift_power_sums(sums: Tensor, delta: Tensor) -> Tensor:
    """Power sums about ``m`` -> about ``m - delta``: ``sum_j C(p,j) delta^(p-j) P_j``.

    ``sums``: (5, D) float64 rows ``P_0 = n, P_1..P_4``; ``delta``: (D,) float64.
    """
    powers = torch.cat([torch.ones_like(delta)[None], delta.expand(4, -1).cumprod(0)])
    terms = (_SHIFT.to(sums.device) @ sums).view(5, 5, -1)
    return (powers[:, None, :] * terms).sum(0)


class ChannelMoments:
    """Per channel: ``n`` and power sums about a reference, float64 (see module doc)."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.sums = torch.zeros(5, dim, dtype=torch.float64, device=device)  # n, S1..S4
        self.ref = torch.zeros(dim, dtype=torch.float64, device=device)

    def add_batch(self, x: Tensor, mask: Tensor, n: Tensor, col_sum: Tensor) -> None:
        """Add a batch: ``x`` (R, D) float32 with excluded entries already 0.

        ``mask``: (R, 1) or (R, D) float32 1/0 of the counted entries; ``n``: (D,) counts;
        ``col_sum``: ``x.sum(0)`` (float32, shared with the other per-channel sums). Uses the
        scratch buffers "work1" and "work2" (their previous contents are overwritten).
        """
        shift = col_sum / n.clamp(min=1)
        shape, dev = x.shape, x.device
        # d = (x - shift) * mask in one pass (x is already 0 where mask is 0), then the powers
        # in place: two work buffers, no temporaries
        d = torch.addcmul(
            x, mask, shift, value=-1.0, out=buffer("work1", shape, torch.float32, dev)
        )
        p1 = d.sum(0)
        d2 = torch.mul(d, d, out=buffer("work2", shape, torch.float32, dev))
        p2 = d2.sum(0)
        p3 = d.mul_(d2).sum(0)
        p4 = d2.square_().sum(0)
        batch = torch.stack([n.to(torch.float32), p1, p2, p3, p4]).double()
        shift64 = shift.double()
        self.ref = torch.where(self.sums[0] > 0, self.ref, shift64)
        self.sums += shift_power_sums(batch, shift64 - self.ref)

    def add_power_sums(self, batch: Tensor, mean: Tensor) -> None:
        """Add a batch given as ``(5, D)`` float64 ``[n, P1..P4]`` about its means ``mean``."""
        shift64 = mean.double()
        self.ref = torch.where(self.sums[0] > 0, self.ref, shift64)
        self.sums += shift_power_sums(batch.double(), shift64 - self.ref)

    def merge(self, other: ChannelMoments) -> None:
        """Add ``other``'s sums, shifted to this state's reference (float64)."""
        sums, ref = other.sums.to(self.sums.device), other.ref.to(self.sums.device)
        self.ref = torch.where(self.sums[0] > 0, self.ref, ref)
        self.sums += shift_power_sums(sums, ref - self.ref)

    def central(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``n``, mean, ``M2`` and ``M4`` per channel (numpy float64; mean NaN where n = 0)."""
        n, s1, s2, s3, s4 = self.sums.cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(n > 0, s1 / n, 0.0)
        m2 = s2 - n * c * c
        m4 = s4 - 4 * c * s3 + 6 * c * c * s2 - 3 * n * c**4
        mean = np.where(n > 0, self.ref.cpu().numpy() + c, np.nan)
        return n, mean, m2, m4

    def kurtosis(self) -> np.ndarray:
        """Excess kurtosis ``n M4 / M2^2 - 3`` per channel (numpy float64, NaN if undefined)."""
        n, _, m2, m4 = self.central()
        with np.errstate(divide="ignore", invalid="ignore"):
            k = n * m4 / (m2 * m2) - 3.0
        return np.where((n > 1) & (m2 > 0) & np.isfinite(k), k, np.nan)
