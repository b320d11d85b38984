"""One-pass CPU kernels (numba) for the per-batch reductions of :class:`SiteStats`.

The eager torch path reads an ``(R, D)`` batch a dozen times (conversion, |x|, x^2, row and
column sums, maxima, histogram, medians...). On a CPU that costs several times the forward
pass itself. These kernels read each entry once, in parallel over blocks of rows, and produce
exactly the per-batch quantities the torch path derives:

* per row: counted entries ``n``, ``sum x``, ``sum x^2``, ``sum x^4``, ``sum |x|``, signed max
  and min, max |x| and its channel, massive entries (Sun et al., per-token lower median,
  computed only for rows whose max |x| exceeds the absolute threshold);
* per channel: counted entries, ``sum x``, ``sum x^2``, ``sum |x|``, max |x``, massive entries,
  and (second pass, optional) the power sums ``P_1..P_4`` of ``x - m`` about the batch's
  channel means ``m``;
* the |x| histogram on the float32 bit-pattern bins of :mod:`actscope.stats.histogram`;
* counts of NaN, +Inf and -Inf entries in valid rows (excluded from everything else).

Inputs are bfloat16 (read through their 16 bit patterns), float16 or float32. Accumulation is
float64. Padding rows (``valid`` False) are skipped entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

try:  # numba is a hard dependency, but keep the torch path importable without it
    import numba as nb
except ImportError:  # pragma: no cover
    nb = None

NBINS = 1 << 15
_F32_INF = np.uint32(0x7F800000)


def available() -> bool:
    """True when the numba kernels can run."""
    return nb is not None


@dataclass
class Partials:
    """Per-batch reductions (numpy arrays; see the module docstring)."""

    n_row: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    s4: np.ndarray
    sabs: np.ndarray
    rmax: np.ndarray
    rmin: np.ndarray
    row_max: np.ndarray
    m_row: np.ndarray
    n_col: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    cabs: np.ndarray
    cmax: np.ndarray
    m_col: np.ndarray
    hist: np.ndarray
    nonfinite: np.ndarray  # nan, +inf, -inf
    power: np.ndarray | None  # (5, D): n, P1..P4 about the batch channel means


if nb is not None:

    @nb.njit(cache=True, inline="always")
    def _lower_median(buf: np.ndarray, n: int) -> float:
        k = (n + 1) // 2 - 1
        part = np.partition(buf[:n], k)
        return part[k]

    _FM = {"reassoc", "contract", "arcp"}  # vectorise reductions; keep NaN/Inf semantics

    _ABS = np.uint32(0x7FFFFFFF)
    _SIGN = np.uint32(0x80000000)

    # Only called on rows whose sum is finite, hence free of NaN and Inf. Comparisons are made
    # on the integer bit patterns (monotone in |x| for finite floats), which vectorise; float
    # min/max reductions do not.
    @nb.njit(cache=True, boundscheck=False, fastmath=True)
    def _finite_row(
        row: np.ndarray,
        fv: np.ndarray,
        dim: int,
        h: np.ndarray,
        channels: bool,
        c1: np.ndarray,
        c2: np.ndarray,
        cabs: np.ndarray,
        cmaxb: np.ndarray,
    ) -> tuple[float, float, float, float, float, float]:
        """Row of finite values: row sums in float32 lanes, column sums in float64 (the
        per-channel count of a finite row is counted once per row by the caller)."""
        a2 = np.float32(0.0)
        a4 = np.float32(0.0)
        aa = np.float32(0.0)
        max_pos = np.uint32(0)  # largest bit pattern among x >= +0 (0: none or only +0)
        min_pos = np.uint32(0x7F800000)  # smallest among x >= +0 (inf bits: none)
        max_neg = np.uint32(0)  # largest |x| bits among x <= -0
        min_neg = np.uint32(0x7F800000)
        n_pos = 0
        for d in range(dim):
            v = fv[d]
            v2 = v * v
            a2 += v2
            a4 += v2 * v2
            aa += abs(v)
            b = row[d]
            m = b & _ABS
            neg = b >= _SIGN
            n_pos += 0 if neg else 1
            max_pos = max_pos if neg or m <= max_pos else m
            min_pos = min_pos if neg or m >= min_pos else m
            max_neg = max_neg if (not neg) or m <= max_neg else m
            min_neg = min_neg if (not neg) or m >= min_neg else m
        if channels:
            for d in range(dim):
                v = np.float64(fv[d])
                c1[d] += v
                c2[d] += v * v
                cabs[d] += abs(v)
                m = row[d] & _ABS
                cmaxb[d] = m if m > cmaxb[d] else cmaxb[d]
        for d in range(dim):
            h[(row[d] & _ABS) >> np.uint32(16)] += 1
        mx = _bits_to_f32(max_pos) if n_pos > 0 else -_bits_to_f32(min_neg)
        mn = -_bits_to_f32(max_neg) if n_pos < dim else _bits_to_f32(min_pos)
        am = _bits_to_f32(max_pos if max_pos > max_neg else max_neg)
        return a2, a4, aa, mx, mn, am

    @nb.njit(cache=True, inline="always")
    def _bits_to_f32(b: np.uint32) -> float:
        buf = np.empty(1, dtype=np.uint32)
        buf[0] = b
        return buf.view(np.float32)[0]

    @nb.njit(cache=True, boundscheck=False, inline="always")
    def _widen(raw: np.ndarray, out: np.ndarray) -> None:
        """float32 bit patterns of one row: bf16 (uint16) shifted left by 16, or copied."""
        if raw.itemsize == 2:
            for d in range(raw.shape[0]):
                out[d] = np.uint32(raw[d]) << np.uint32(16)
        else:
            for d in range(raw.shape[0]):
                out[d] = raw[d]

    @nb.njit(parallel=True, cache=True, boundscheck=False, fastmath=_FM)
    def _row_pass(
        raw: np.ndarray,  # (R, D) bit patterns: uint16 (bfloat16) or uint32 (float32)
        valid: np.ndarray,
        nchunks: int,
        channels: bool,
        massive: bool,
        mthr: float,
        mratio: float,
        n_row: np.ndarray,
        s1: np.ndarray,
        s2: np.ndarray,
        s4: np.ndarray,
        sabs: np.ndarray,
        rmax: np.ndarray,
        rmin: np.ndarray,
        row_max: np.ndarray,
        m_row: np.ndarray,
        cn: np.ndarray,  # (nchunks, D) counted entries of rows holding NaN/Inf
        fin: np.ndarray,  # (nchunks,) finite rows (each counts once in every channel)
        c1: np.ndarray,  # (nchunks, D)
        c2: np.ndarray,
        cabs: np.ndarray,
        cmaxb: np.ndarray,  # (nchunks, D) uint32 bit patterns of max |x|
        mcol: np.ndarray,
        hist: np.ndarray,  # (nchunks, NBINS) int32 (a batch holds < 2^31 entries)
        bad: np.ndarray,  # (nchunks, 3)
    ) -> None:
        rows, dim = raw.shape
        per = (rows + nchunks - 1) // nchunks
        for c in nb.prange(nchunks):
            h = hist[c]
            fbuf = np.empty(dim, dtype=np.float32)
            row = np.empty(dim, dtype=np.uint32)
            fv = row.view(np.float32)
            for r in range(c * per, min(rows, (c + 1) * per)):
                if not valid[r]:
                    continue
                _widen(raw[r], row)
                t1 = np.float32(0.0)
                for d in range(dim):
                    t1 += fv[d]
                if np.isfinite(t1):
                    a2, a4, aa, mx, mn, am = _finite_row(
                        row, fv, dim, h, channels, c1[c], c2[c], cabs[c], cmaxb[c]
                    )
                    fin[c] += 1
                    n = dim
                    a1 = np.float64(t1)
                else:  # a NaN/Inf (or a float32 overflow of the sum): entry by entry
                    n = 0
                    a1 = 0.0
                    a2 = 0.0
                    a4 = 0.0
                    aa = 0.0
                    mx = -np.inf
                    mn = np.inf
                    am = 0.0
                    for d in range(dim):
                        bits = row[d]
                        if (bits & _F32_INF) == _F32_INF:
                            if (bits & np.uint32(0x007FFFFF)) != 0:
                                bad[c, 0] += 1
                            elif bits >> np.uint32(31):
                                bad[c, 2] += 1
                            else:
                                bad[c, 1] += 1
                            continue
                        v = np.float64(fv[d])
                        a = abs(v)
                        h[(bits & np.uint32(0x7FFFFFFF)) >> np.uint32(16)] += 1
                        n += 1
                        a1 += v
                        a2 += v * v
                        a4 += v * v * v * v
                        aa += a
                        mx = max(mx, v)
                        mn = min(mn, v)
                        am = max(am, a)
                        if channels:
                            cn[c, d] += 1
                            c1[c, d] += v
                            c2[c, d] += v * v
                            cabs[c, d] += a
                            mb = bits & _ABS
                            if mb > cmaxb[c, d]:
                                cmaxb[c, d] = mb
                n_row[r] = n
                s1[r] = a1
                s2[r] = a2
                s4[r] = a4
                sabs[r] = aa
                rmax[r] = mx
                rmin[r] = mn
                row_max[r] = am
                if massive and n > 0 and am > mthr:
                    # A hit needs ratio * median <= |a| <= max |a|, i.e. median <= max / ratio,
                    # and the lower median is <= lim only when at least (k + 1) // 2 entries
                    # are: count them (cheap) and skip the median when too few are (no entry
                    # of the row can then be a hit). The 1e-9 slack only ever keeps a row.
                    lim = np.float64(am) / mratio * (1.0 + 1e-9)
                    k = 0
                    small = 0
                    for d in range(dim):
                        if (row[d] & _F32_INF) != _F32_INF:
                            a = abs(fv[d])
                            fbuf[k] = a
                            k += 1
                            small += 1 if a <= lim else 0
                    if small < (k + 1) // 2:
                        continue
                    med = _lower_median(fbuf, k)
                    cnt = 0
                    for d in range(dim):
                        if (row[d] & _F32_INF) == _F32_INF:
                            continue
                        a = abs(fv[d])
                        if a > mthr and a >= mratio * med:
                            cnt += 1
                            mcol[c, d] += 1
                    m_row[r] = cnt

    @nb.njit(parallel=True, cache=True, boundscheck=False, fastmath=_FM)
    def _power_pass(
        raw: np.ndarray, valid: np.ndarray, nchunks: int, mean: np.ndarray, out: np.ndarray
    ) -> None:
        """out[c, p-1, d] = sum over counted entries of (x - mean[d])^p, p = 1..4."""
        rows, dim = raw.shape
        per = (rows + nchunks - 1) // nchunks
        for c in nb.prange(nchunks):
            o = out[c]
            row = np.empty(dim, dtype=np.uint32)
            fv = row.view(np.float32)
            for r in range(c * per, min(rows, (c + 1) * per)):
                if not valid[r]:
                    continue
                _widen(raw[r], row)
                for d in range(dim):
                    e = np.float64(fv[d]) - mean[d]
                    if not np.isfinite(e):
                        continue
                    e2 = e * e
                    o[0, d] += e
                    o[1, d] += e2
                    o[2, d] += e2 * e
                    o[3, d] += e2 * e2

    @nb.njit(cache=True, boundscheck=False, inline="always")
    def _insert(keys: np.ndarray, a: np.ndarray, b: np.ndarray, key: int, x: int, y: int) -> None:
        """Insert ``key`` (with payload x, y) into ``keys`` sorted descending, dropping the last."""
        i = keys.shape[0] - 1
        while i > 0 and keys[i - 1] < key:
            keys[i] = keys[i - 1]
            a[i] = a[i - 1]
            b[i] = b[i - 1]
            i -= 1
        keys[i] = key
        a[i] = x
        b[i] = y

    @nb.njit(cache=True, boundscheck=False)
    def _topk(
        raw: np.ndarray, row_max: np.ndarray, row_ok: np.ndarray, rank: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` entries of |x| under the total order of :mod:`actscope.stats.topk`.

        Same keys as ``Events.from_batch``: candidate rows by ``bits(row max) << 31 | (2^31 - 1
        - rank)``, then their entries by ``bits(|a|) << 31 | (2^31 - 1 - (order * D + d))``.
        Returns (value float32, row, channel) sorted, empty slots -1.
        """
        rows, dim = raw.shape
        low = (1 << 31) - 1
        kr = min(k, rows)
        rkeys = np.full(kr, -1, np.int64)
        cand = np.full(kr, -1, np.int64)
        dummy = np.zeros(kr, np.int64)
        rm = row_max.view(np.int32)
        for r in range(rows):
            if not row_ok[r]:
                continue
            key = (np.int64(rm[r]) << 31) | (low - rank[r])
            if key > rkeys[kr - 1]:
                _insert(rkeys, cand, dummy, key, r, 0)
        order = np.full(kr, -1, np.int64)
        for j in range(kr):
            if cand[j] >= 0:
                order[j] = rank[cand[j]]
        if rows * dim >= 1 << 31:  # rank among the candidates keeps the tie-break < 2^31
            srt = np.argsort(order)
            for i in range(kr):
                order[srt[i]] = i
        keys = np.full(k, -1, np.int64)
        erow = np.full(k, -1, np.int64)
        ech = np.full(k, -1, np.int64)
        shift = 16 if raw.itemsize == 2 else 0
        for j in range(kr):
            r = cand[j]
            if r < 0:
                continue
            base = order[j] * dim
            for d in range(dim):
                bits = (np.int64(raw[r, d]) << shift) & 0x7FFFFFFF
                key = (bits << 31) | (low - (base + d))
                if key > keys[k - 1]:
                    _insert(keys, erow, ech, key, r, d)
        vals = np.full(k, -1.0, np.float32)
        vb = np.empty(1, np.int32)
        for i in range(k):
            if keys[i] >= 0:
                vb[0] = np.int32(keys[i] >> 31)
                vals[i] = vb.view(np.float32)[0]
        return vals, erow, ech

    @nb.njit(cache=True, boundscheck=False)
    def _finish_rows(
        valid: np.ndarray,
        n_row: np.ndarray,
        s1: np.ndarray,
        s2: np.ndarray,
        s4: np.ndarray,
        sabs: np.ndarray,
        rmax: np.ndarray,
        rmin: np.ndarray,
        row_max: np.ndarray,
        m_row: np.ndarray,
        dom: np.ndarray,
        moments: bool,
        domains: bool,
        row_sums: np.ndarray,  # (9,) float64, updated in place
        dom_sums: np.ndarray,  # (G, 9) float64
        dom_max: np.ndarray,  # (G,) float32
        extrema: np.ndarray,  # (3,) float64: -min, max, largest token kurtosis
    ) -> None:
        """Per-row columns of :data:`actscope.stats.readout.ROW_COLUMNS` summed per site and
        per domain, and the extrema; the OSP token kurtosis ``max(0, m4 / var^2 - 3)`` with
        ``var = m2 - m1^2`` (defined where ``var > 0`` and the ratio is finite), as
        :func:`actscope.stats.moments.token_kurtosis`."""
        col = np.zeros(9)
        for r in range(n_row.shape[0]):
            n = n_row[r]
            ok = valid[r] and n > 0
            kt = 0.0
            kok = False
            if moments:
                nn = np.float64(max(n, 1))
                m1 = s1[r] / nn
                m2 = s2[r] / nn
                m4 = s4[r] / nn
                var = m2 - m1 * m1
                ratio = m4 / (var * var) if var != 0.0 else np.inf
                if var > 0.0 and np.isfinite(ratio):
                    kt = max(ratio - 3.0, 0.0)
                    kok = ok
                if ok:
                    extrema[0] = max(extrema[0], -np.float64(rmin[r]))
                    extrema[1] = max(extrema[1], np.float64(rmax[r]))
                    if kok:
                        extrema[2] = max(extrema[2], kt)
            col[0] = 1.0 if valid[r] else 0.0
            col[1] = n
            col[2] = s1[r]
            col[3] = s2[r] if moments else 0.0
            col[4] = sabs[r]
            col[5] = kt
            col[6] = 1.0 if kok else 0.0
            col[7] = m_row[r]
            col[8] = 1.0 if m_row[r] > 0 else 0.0
            for j in range(9):
                row_sums[j] += col[j]
            if domains:
                g = dom[r]
                for j in range(9):
                    dom_sums[g, j] += col[j]
                if ok and row_max[r] > dom_max[g]:
                    dom_max[g] = row_max[r]

    @nb.njit(cache=True, boundscheck=False)
    def _add_shifted_sums(
        sums: np.ndarray, ref: np.ndarray, batch: np.ndarray, mean: np.ndarray
    ) -> None:
        """``sums += batch`` re-centred from the batch means onto ``ref`` (both (5, D) float64
        ``[n, P1..P4]``): ``sum (x - ref)^p = sum_j C(p, j) (mean - ref)^(p-j) P_j``. Channels
        without data yet take the batch mean as their reference."""
        for d in range(sums.shape[1]):
            if sums[0, d] <= 0:
                ref[d] = mean[d]
            dl = mean[d] - ref[d]
            n, p1, p2, p3, p4 = batch[0, d], batch[1, d], batch[2, d], batch[3, d], batch[4, d]
            d2 = dl * dl
            sums[0, d] += n
            sums[1, d] += p1 + n * dl
            sums[2, d] += p2 + 2.0 * dl * p1 + n * d2
            sums[3, d] += p3 + 3.0 * dl * p2 + 3.0 * d2 * p1 + n * d2 * dl
            sums[4, d] += p4 + 4.0 * dl * p3 + 6.0 * d2 * p2 + 4.0 * d2 * dl * p1 + n * d2 * d2


def topk_events(
    x: Tensor, row_max: Tensor, row_ok: Tensor, rank: Tensor, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(value, row, channel)`` of the batch's top-``k`` |x| (finite batches; see ``_topk``)."""
    return _topk(
        _raw_bits(x.detach()),
        row_max.numpy(),
        row_ok.numpy().astype(np.bool_, copy=False),
        rank.numpy(),
        k,
    )


def finish_rows(
    p: Partials, valid: Tensor, dom: Tensor | None, moments: bool, state: dict[str, Tensor]
) -> None:
    """Add a batch's per-row partials to ``state`` tensors (CPU, updated in place)."""
    g = state.get("dom_sums")
    _finish_rows(
        valid.numpy().astype(np.bool_, copy=False),
        p.n_row,
        p.s1,
        p.s2,
        p.s4,
        p.sabs,
        p.rmax,
        p.rmin,
        p.row_max,
        p.m_row,
        dom.numpy() if dom is not None else np.zeros(1, np.int64),
        moments,
        dom is not None,
        state["row_sums"].numpy(),
        g.numpy() if g is not None else np.zeros((1, 9)),
        state["dom_max"].numpy() if g is not None else np.zeros(1, np.float32),
        state["extrema"].numpy(),
    )


def _raw_bits(x: Tensor) -> np.ndarray:
    """(R, D) bit patterns: uint16 for bfloat16 (widened in the kernel), else float32 uint32."""
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
) -> Partials:
    """All per-batch reductions of one CPU batch in one (or two) passes."""
    raw = _raw_bits(x.detach())
    rows, dim = raw.shape
    ok = valid.numpy().astype(np.bool_, copy=False)
    nchunks = max(1, min(nb.get_num_threads(), rows))
    f64 = np.float64
    z = np.zeros
    n_row, m_row = z(rows, np.int64), z(rows, np.int64)
    s1, s2, s4, sabs = z(rows, f64), z(rows, f64), z(rows, f64), z(rows, f64)
    rmax, rmin, row_max = z(rows, np.float32), z(rows, np.float32), z(rows, np.float32)
    cd = dim if channels else 1
    cn, c1, c2, cabs = (
        z((nchunks, cd), np.int64),
        z((nchunks, cd), f64),
        z((nchunks, cd), f64),
        z((nchunks, cd), f64),
    )
    cmaxb = z((nchunks, cd), np.uint32)
    mcol = z((nchunks, dim), np.int64)
    hist = z((nchunks, NBINS), np.int32 if rows * dim < 2**31 else np.int64)
    fin = z(nchunks, np.int64)
    bad = z((nchunks, 3), np.int64)
    _row_pass(
        raw,
        ok,
        nchunks,
        channels,
        massive,
        float(massive_abs),
        float(massive_ratio),
        n_row,
        s1,
        s2,
        s4,
        sabs,
        rmax,
        rmin,
        row_max,
        m_row,
        cn,
        fin,
        c1,
        c2,
        cabs,
        cmaxb,
        mcol,
        hist,
        bad,
    )
    n_col = cn.sum(0) + fin.sum()
    col1 = c1.sum(0)
    power = None
    if channel_moments and channels:
        mean = col1 / np.maximum(n_col, 1)
        pw = z((nchunks, 4, dim), f64)
        _power_pass(raw, ok, nchunks, mean, pw)
        power = np.concatenate([n_col[None].astype(f64), pw.sum(0)])
    return Partials(
        n_row=n_row,
        s1=s1,
        s2=s2,
        s4=s4,
        sabs=sabs,
        rmax=rmax,
        rmin=rmin,
        row_max=row_max,
        m_row=m_row,
        n_col=n_col,
        c1=col1,
        c2=c2.sum(0),
        cabs=cabs.sum(0),
        cmax=cmaxb.max(0).view(np.float32),
        m_col=mcol.sum(0),
        hist=hist.sum(0, dtype=np.int64),
        nonfinite=bad.sum(0),
        power=power,
    )


def add_shifted_sums(sums: Tensor, ref: Tensor, batch: np.ndarray, mean: np.ndarray) -> None:
    """In-place CPU version of ``ChannelMoments.add_power_sums`` (see ``_add_shifted_sums``)."""
    _add_shifted_sums(sums.numpy(), ref.numpy(), batch, mean)
