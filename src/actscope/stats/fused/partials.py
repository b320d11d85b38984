"""``partials``: one kernel call over a batch, and the per-batch results it returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba as nb
import numpy as np
import torch
from torch import Tensor

from actscope.stats.fused.rows import power_pass, row_pass

NBINS = 1 << 15
_SCRATCH = threading.local()  # per thread: {(chunks, wide): zeroed histogram scratch}


@dataclass
class Partials:
    """Per-batch reductions of one kernel call (numpy; see the package docstring).

    Per-row arrays, and per-chunk arrays (one slice per parallel chunk of rows, leading axis)
    that the properties sum over the chunks; :func:`fold` adds them to a state in one call.
    """

    bits: np.ndarray  # (R, D) the batch's bit patterns as the kernel read them (raw_bits)
    per_row_sums: np.ndarray  # (4, R) float64: sum x, sum x^2, sum x^4, sum |x|
    per_row_ext: np.ndarray  # (3, R) float32: max, min, max |x|
    per_row_counts: np.ndarray  # (2, R) int64: counted entries, massive entries
    chunk_n: np.ndarray  # (C, D) counted entries of rows taken entry by entry (float64 path)
    chunk_rows: np.ndarray  # (C,) rows of the block path: each counts once in every channel
    chunk_sums: np.ndarray  # (C, 3, D) float64: sum x, sum x^2, sum |x|
    chunk_maxbits: np.ndarray  # (C, D) uint32 bit patterns of max |x|
    chunk_power: np.ndarray  # (C, 4, D) float64: P1..P4 about power_ref
    chunk_massive: np.ndarray  # (C, D) massive entries per channel
    hist: np.ndarray  # (NBINS,) int64 the batch's |x| histogram was added to (see partials)
    chunk_bad: np.ndarray  # (C, 3): nan, +inf, -inf
    power_ref: np.ndarray | None  # (D,) float64: the batch channel means, or the given reference

    @property
    def n_row(self) -> np.ndarray:
        return self.per_row_counts[0]

    @property
    def row_ok(self) -> np.ndarray:
        """Rows that were counted: valid, with at least one finite entry."""
        return self.per_row_counts[0] > 0

    @property
    def m_row(self) -> np.ndarray:
        return self.per_row_counts[1]

    @property
    def s1(self) -> np.ndarray:
        return self.per_row_sums[0]

    @property
    def s2(self) -> np.ndarray:
        return self.per_row_sums[1]

    @property
    def s4(self) -> np.ndarray:
        return self.per_row_sums[2]

    @property
    def sabs(self) -> np.ndarray:
        return self.per_row_sums[3]

    @property
    def rmax(self) -> np.ndarray:
        return self.per_row_ext[0]

    @property
    def rmin(self) -> np.ndarray:
        return self.per_row_ext[1]

    @property
    def row_max(self) -> np.ndarray:
        return self.per_row_ext[2]

    @property
    def n_col(self) -> np.ndarray:
        return self.chunk_n.sum(0) + self.chunk_rows.sum()

    @property
    def c1(self) -> np.ndarray:
        return self.chunk_sums[:, 0].sum(0)

    @property
    def c2(self) -> np.ndarray:
        return self.chunk_sums[:, 1].sum(0)

    @property
    def cabs(self) -> np.ndarray:
        return self.chunk_sums[:, 2].sum(0)

    @property
    def cmax(self) -> np.ndarray:
        return self.chunk_maxbits.max(0).view(np.float32)

    @property
    def m_col(self) -> np.ndarray:
        return self.chunk_massive.sum(0)

    @property
    def nonfinite(self) -> np.ndarray:
        return self.chunk_bad.sum(0)

    @property
    def power(self) -> np.ndarray | None:
        """(5, D): n, P1..P4 about ``power_ref`` (None without channel moments)."""
        if self.power_ref is None:
            return None
        return np.concatenate([self.n_col[None].astype(np.float64), self.chunk_power.sum(0)])


def per_chunk(rows: int, nchunks: int) -> int:
    """Rows per chunk of the kernels (the last chunk may hold fewer)."""
    return (rows + nchunks - 1) // nchunks


def _scratch(nchunks: int, wide: bool) -> np.ndarray:
    """This thread's (nchunks, NBINS) histogram scratch, int32 (int64 if ``wide``); the kernel
    leaves it zeroed."""
    cache = getattr(_SCRATCH, "arrays", None)
    if cache is None:
        cache = _SCRATCH.arrays = {}
    arr = cache.get((nchunks, wide))
    if arr is None:
        arr = cache[nchunks, wide] = np.zeros((nchunks, NBINS), np.int64 if wide else np.int32)
    return arr


def raw_bits(x: Tensor) -> np.ndarray:
    """(R, D) bit patterns: uint16 for bfloat16 (read in place by the kernels), else float32
    uint32."""
    if x.dtype == torch.bfloat16:
        return x.contiguous().view(torch.int16).numpy().view(np.uint16)
    return x.contiguous().to(torch.float32).numpy().view(np.uint32)


def partials(
    x: Tensor,
    valid: Tensor,
    *,
    channels: bool,
    channel_moments: bool,
    massive: bool,
    massive_abs: float,
    massive_ratio: float,
    moment_ref: np.ndarray | None = None,
    hist_out: np.ndarray | None = None,
) -> Partials:
    """All per-batch reductions of one CPU batch in one pass.

    Power sums (``channel_moments``) are taken about ``moment_ref`` (float64 ``(D,)``, the
    state's reference) in the same pass when it is given, else about the batch's channel
    means in a second pass; ``Partials.power_ref`` says which. The |x| histogram is added to
    ``hist_out`` (int64 ``(NBINS,)``, e.g. a reducer's counts) in place, or to a new zero
    array; either is ``Partials.hist``. Rows are split into one chunk per launched numba
    thread (``NUMBA_NUM_THREADS``; any number of chunks gives the same sums).
    """
    raw = raw_bits(x.detach())
    rows, dim = raw.shape
    ok = valid.numpy().astype(np.bool_, copy=False)
    nchunks = max(1, min(nb.config.NUMBA_NUM_THREADS, rows))
    f64 = np.float64
    z = np.zeros
    channels = channels or channel_moments
    one_pass = channel_moments and moment_ref is not None
    per_row_sums, per_row_ext, per_row_counts = (
        z((4, rows), f64),
        z((3, rows), np.float32),
        z((2, rows), np.int64),
    )
    cd = dim if channels else 1
    cn = z((nchunks, cd), np.int64)
    csum = z((nchunks, 3, cd), f64)
    cmaxb = z((nchunks, cd), np.uint32)
    pw = z((nchunks, 4, dim if one_pass else 1), f64)
    ref = np.ascontiguousarray(moment_ref, dtype=f64) if one_pass else z(1)
    mcol = z((nchunks, dim), np.int64)
    hist = _scratch(nchunks, per_chunk(rows, nchunks) * dim >= 2**31)
    if hist_out is None:
        hist_out = z(NBINS, np.int64)
    fin = z(nchunks, np.int64)
    bad = z((nchunks, 3), np.int64)
    row_pass(
        raw,
        ok,
        nchunks,
        channels,
        one_pass,
        ref,
        massive,
        float(massive_abs),
        float(massive_ratio),
        per_row_sums,
        per_row_ext,
        per_row_counts,
        cn,
        fin,
        csum,
        cmaxb,
        pw,
        mcol,
        hist,
        hist_out,
        bad,
    )
    power_ref = None
    if channel_moments:
        if one_pass:
            power_ref = ref
        else:  # about the batch means: a second pass
            n_col = cn.sum(0) + fin.sum()
            power_ref = csum[:, 0].sum(0) / np.maximum(n_col, 1)
            pw = z((nchunks, 4, dim), f64)
            power_pass(raw, ok, nchunks, power_ref, pw)
    return Partials(
        bits=raw,
        per_row_sums=per_row_sums,
        per_row_ext=per_row_ext,
        per_row_counts=per_row_counts,
        chunk_n=cn,
        chunk_rows=fin,
        chunk_sums=csum,
        chunk_maxbits=cmaxb,
        chunk_power=pw,
        chunk_massive=mcol,
        hist=hist_out,
        chunk_bad=bad,
        power_ref=power_ref,
    )
