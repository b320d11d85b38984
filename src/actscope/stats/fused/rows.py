"""The row pass: every per-row and per-channel reduction of one batch in one read.

Rows are split into one contiguous chunk per numba thread. Each row is read in place through
its bit patterns (bfloat16 as uint16, converted to float32 in registers; never widened into a
buffer) and, when its float32 sum is finite and its values below 2^24, reduced in float32
lanes: row sums (float32 within blocks of 512 entries, float64 across: vocabulary-wide rows
keep ~1e-8 relative accuracy), signed max/min through monotone integer keys (on the 16-bit patterns for
bfloat16: 32 lanes), max |x|, the |x| histogram; its per-channel sums (x, x^2, |x|, and the
power sums of ``x - ref``) go into float32 block accumulators four rows at a time, added to
float64 every 32 rows. Other rows (NaN/Inf, or huge values) are widened and taken entry by
entry in float64.

The histogram goes into a per-thread scratch table that the kernel leaves zeroed: only the
bins between a chunk's smallest and largest non-zero |x| (and bin 0) are added to the output
and cleared, instead of allocating, zeroing and folding 2^15 bins per call. Integer code casts
every intermediate back to its width (numba widens integer arithmetic to 64 bits, which halves
the vector lanes).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from actscope.stats.fused._common import (
    ABS,
    F32_INF,
    FM,
    as_f32,
    key16_to_f32,
    key_to_f32,
    lower_median,
    widen,
)

_BLOCK = 32  # rows per float32 block of the per-channel sums (then added in float64)
_ROW_BLOCK = 512  # entries per float32 block of a row's sums (then added in float64)
_F32_SAFE = 2.0**24  # |x| and |ref| below this: x^4 sums of a block stay finite in float32


# Integer helpers cast every intermediate back to its width (see the module docstring).
_I16 = np.int16
_I32 = np.int32


@nb.njit(cache=True, boundscheck=False, fastmath=FM)
def _extremes16(b: np.ndarray) -> tuple[int, int, int, int]:
    """Monotone keys of max and min, and the bit patterns of max |x| and of the smallest
    non-zero |x| (0x7FFF if none), of a bfloat16 row from its int16 patterns (32 lanes)."""
    kmax = _I16(-32767)
    kmin = _I16(32767)
    amax = _I16(0)
    amin = _I16(0x7FFF)
    for d in range(b.shape[0]):
        v = b[d]
        key = _I16(v ^ _I16(_I16(v >> _I16(15)) & _I16(0x7FFF)))
        kmax = _I16(max(kmax, key))
        kmin = _I16(min(kmin, key))
        a = _I16(v & _I16(0x7FFF))
        amax = _I16(max(amax, a))
        amin = _I16(min(amin, a if a != _I16(0) else _I16(0x7FFF)))
    return kmax, kmin, amax, amin


@nb.njit(cache=True, boundscheck=False, fastmath=FM)
def _extremes32(b: np.ndarray) -> tuple[int, int, int, int]:
    """As :func:`_extremes16` for a float32 row (int32 patterns; no non-zero: 0x7FFFFFFF)."""
    kmax = _I32(-(2**31) + 1)
    kmin = _I32(2**31 - 1)
    amax = _I32(0)
    amin = _I32(0x7FFFFFFF)
    for d in range(b.shape[0]):
        v = b[d]
        key = _I32(v ^ _I32(_I32(v >> _I32(31)) & _I32(0x7FFFFFFF)))
        kmax = _I32(max(kmax, key))
        kmin = _I32(min(kmin, key))
        a = _I32(v & _I32(0x7FFFFFFF))
        amax = _I32(max(amax, a))
        amin = _I32(min(amin, a if a != _I32(0) else _I32(0x7FFFFFFF)))
    return kmax, kmin, amax, amin


@nb.njit(cache=True, inline="always")
def _value(row: np.ndarray, d: int) -> float:
    """Entry ``d`` of a row of bit patterns (uint16 bfloat16 or uint32 float32) as float32."""
    if row.itemsize == 2:
        return as_f32(_I32(_I32(row[d]) << _I32(16)))
    return as_f32(np.uint32(row[d]))  # (typed for both widths; only uint32 reaches here)


@nb.njit(cache=True, inline="always")
def _abs_bits(row: np.ndarray, d: int) -> np.uint32:
    """float32 bit pattern of ``|x|`` of entry ``d`` (monotone in ``|x|`` as an unsigned int)."""
    if row.itemsize == 2:
        return np.uint32(row[d] & np.uint16(0x7FFF)) << np.uint32(16)
    return np.uint32(row[d]) & ABS


@nb.njit(cache=True, boundscheck=False, fastmath=FM)
def _block_sums(raw: np.ndarray) -> tuple[float, float, float, float]:
    """sum x, sum x^2, sum x^4, sum |x| of a (short) row of bit patterns in float32 lanes."""
    b1 = np.float32(0.0)
    b2 = np.float32(0.0)
    b4 = np.float32(0.0)
    ba = np.float32(0.0)
    for d in range(raw.shape[0]):  # (from 0: indices provably >= 0, so it vectorises)
        v = _value(raw, d)
        v2 = v * v
        b1 += v
        b2 += v2
        b4 += v2 * v2
        ba += abs(v)
    return b1, b2, b4, ba


# No "nnan"/"ninf" flags: the caller tests the sum for NaN/Inf. Reassociated float sums and
# integer max/min of monotone bit-pattern keys vectorise without them.
@nb.njit(cache=True, boundscheck=False, fastmath=FM)
def _row_stats(raw: np.ndarray) -> tuple[float, float, float, float, float, float, float, int, int]:
    """One row of bit patterns (read in place, never widened into a buffer): sum x, sum x^2,
    sum x^4, sum |x| (float32 lanes over blocks of 512 entries, float64 across blocks), max, min, max |x|, and the histogram bins of max |x|
    and of the smallest non-zero |x|.

    Signed max/min are taken on the integer keys ``b ^ ((b >> 31) & 0x7FFFFFFF)`` of the
    bit patterns ``b`` (for bfloat16, of the 16-bit patterns), monotone in the float value
    (-0 < +0), which vectorise where float max/min do not.
    """
    if raw.itemsize == 2:
        k1, k0, a1, a0 = _extremes16(raw.view(np.int16))
        mx, mn = key16_to_f32(k1), key16_to_f32(k0)
        am = as_f32(_I32(_I32(a1) << _I32(16)))
        hi, lo = np.int64(a1), np.int64(a0)
    else:
        k1, k0, a1, a0 = _extremes32(raw.view(np.int32))
        mx, mn = key_to_f32(k1), key_to_f32(k0)
        am = as_f32(a1)
        hi, lo = np.int64(a1) >> 16, np.int64(a0) >> 16
    t1 = a2 = a4 = aa = 0.0
    n = raw.shape[0]
    for blk in range((n + _ROW_BLOCK - 1) // _ROW_BLOCK):  # float64 across blocks
        b1, b2, b4, ba = _block_sums(raw[blk * _ROW_BLOCK : (blk + 1) * _ROW_BLOCK])
        t1 += b1
        a2 += b2
        a4 += b4
        aa += ba
    return t1, a2, a4, aa, mx, mn, am, hi, lo


@nb.njit(cache=True, boundscheck=False, fastmath=True)
def _channels_4(
    q0: np.ndarray,
    q1: np.ndarray,
    q2: np.ndarray,
    q3: np.ndarray,
    blk: np.ndarray,
    cmaxb: np.ndarray,
) -> None:
    """Four finite rows of bit patterns at once into the float32 block sums (x, x^2, |x|)
    and the max |x| bits: each accumulator is read and written once per four rows."""
    for d in range(q0.shape[0]):
        v0, v1, v2, v3 = _value(q0, d), _value(q1, d), _value(q2, d), _value(q3, d)
        blk[0, d] += (v0 + v1) + (v2 + v3)
        blk[1, d] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
        blk[2, d] += (abs(v0) + abs(v1)) + (abs(v2) + abs(v3))
        m = max(max(_abs_bits(q0, d), _abs_bits(q1, d)), max(_abs_bits(q2, d), _abs_bits(q3, d)))
        cmaxb[d] = m if m > cmaxb[d] else cmaxb[d]


@nb.njit(cache=True, boundscheck=False, fastmath=True)
def _powers_4(
    q0: np.ndarray,
    q1: np.ndarray,
    q2: np.ndarray,
    q3: np.ndarray,
    ref: np.ndarray,
    blk: np.ndarray,
) -> None:
    """Four finite rows of bit patterns into the float32 power sums of ``x - ref``."""
    for d in range(q0.shape[0]):
        r = ref[d]
        e0, e1 = _value(q0, d) - r, _value(q1, d) - r
        e2, e3 = _value(q2, d) - r, _value(q3, d) - r
        f0, f1, f2, f3 = e0 * e0, e1 * e1, e2 * e2, e3 * e3
        blk[0, d] += (e0 + e1) + (e2 + e3)
        blk[1, d] += (f0 + f1) + (f2 + f3)
        blk[2, d] += (f0 * e0 + f1 * e1) + (f2 * e2 + f3 * e3)
        blk[3, d] += (f0 * f0 + f1 * f1) + (f2 * f2 + f3 * f3)


@nb.njit(cache=True, boundscheck=False)
def _last_rows(
    raw: np.ndarray,
    rows: np.ndarray,
    fused_moments: bool,
    ref32: np.ndarray,
    cb: np.ndarray,
    pb: np.ndarray,
    cmaxb: np.ndarray,
) -> None:
    """The last (fewer than four) rows of a chunk through the four-row helpers, widened and
    padded with entries that add nothing: +0 for the channel sums, ``ref`` for the powers."""
    q = np.zeros((4, raw.shape[1]), dtype=np.uint32)
    for i in range(rows.shape[0]):
        widen(raw[rows[i]], q[i])
    _channels_4(q[0], q[1], q[2], q[3], cb, cmaxb)
    if fused_moments:
        for i in range(rows.shape[0], 4):
            q[i] = ref32.view(np.uint32)
        _powers_4(q[0], q[1], q[2], q[3], ref32, pb)


@nb.njit(cache=True, boundscheck=False)
def _flush(blk: np.ndarray, acc: np.ndarray) -> None:
    """``acc`` (float64) += ``blk`` (float32); ``blk`` = 0."""
    for i in range(blk.shape[0]):
        for d in range(blk.shape[1]):
            acc[i, d] += blk[i, d]
            blk[i, d] = 0.0


@nb.njit(cache=True, boundscheck=False)
def _entries_f64(
    row: np.ndarray,
    fv: np.ndarray,
    channels: bool,
    fused_moments: bool,
    ref: np.ndarray,
    cn: np.ndarray,
    csum: np.ndarray,
    cmaxb: np.ndarray,
    pw: np.ndarray,
    h: np.ndarray,
    bad: np.ndarray,
) -> tuple[int, float, float, float, float, float, float, float]:
    """A row holding NaN/Inf, or too large for float32 powers: entry by entry in float64.

    Non-finite entries are counted in ``bad`` (nan, +inf, -inf) and excluded from the rest.
    Returns the row's n, sum x, sum x^2, sum x^4, sum |x|, max, min and max |x|.
    """
    n = 0
    a1 = 0.0
    a2 = 0.0
    a4 = 0.0
    aa = 0.0
    mx = -np.inf
    mn = np.inf
    am = 0.0
    for d in range(fv.shape[0]):
        bits = row[d]
        if (bits & F32_INF) == F32_INF:
            if (bits & np.uint32(0x007FFFFF)) != 0:
                bad[0] += 1
            elif bits >> np.uint32(31):
                bad[2] += 1
            else:
                bad[1] += 1
            continue
        v = np.float64(fv[d])
        a = abs(v)
        h[(bits & ABS) >> np.uint32(16)] += 1
        n += 1
        a1 += v
        a2 += v * v
        a4 += v * v * v * v
        aa += a
        mx = max(mx, v)
        mn = min(mn, v)
        am = max(am, a)
        if channels:
            cn[d] += 1
            csum[0, d] += v
            csum[1, d] += v * v
            csum[2, d] += a
            mb = bits & ABS
            cmaxb[d] = mb if mb > cmaxb[d] else cmaxb[d]
        if fused_moments:
            e = v - ref[d]
            e2 = e * e
            pw[0, d] += e
            pw[1, d] += e2
            pw[2, d] += e2 * e
            pw[3, d] += e2 * e2
    return n, a1, a2, a4, aa, mx, mn, am


@nb.njit(cache=True, boundscheck=False)
def _hist_row(raw: np.ndarray, h: np.ndarray) -> None:
    """Count one finite row's |x| into ``h`` (bin: the top 16 bits of float32 |x|)."""
    if raw.itemsize == 2:
        for d in range(raw.shape[0]):
            h[raw[d] & np.uint16(0x7FFF)] += 1
    else:
        for d in range(raw.shape[0]):
            h[(raw[d] & ABS) >> np.uint32(16)] += 1


@nb.njit(cache=True, boundscheck=False, fastmath=FM)
def _massive_row(
    row: np.ndarray,
    fv: np.ndarray,
    am: float,
    mthr: float,
    mratio: float,
    fbuf: np.ndarray,
    cand: np.ndarray,
    mcol: np.ndarray,
) -> int:
    """Sun et al.'s hits of one row: ``|x| > mthr`` and ``|x| >= mratio * lower median``.

    The lower median is the ``need = ceil(k/2)``-th smallest of the k finite |x|, and
    ``mratio * med <= a`` iff at least ``need`` entries ``e`` have ``mratio * e <= a``
    (``e -> mratio * e`` is monotone). So a candidate ``a`` (``> mthr``) is tested by one
    counting pass, without a selection; the median is selected only for rows with many
    candidates. Rows where even the max fails are dropped after one pass.
    """
    dim = fv.shape[0]
    k = 0
    small = 0
    nc = 0
    for d in range(dim):
        ok = (row[d] & F32_INF) != F32_INF
        a = abs(fv[d])
        k += 1 if ok else 0
        small += 1 if ok and mratio * a <= am else 0
        nc += 1 if ok and a > mthr else 0
    need = (k + 1) // 2
    if small < need:
        return 0
    cnt = 0
    if nc <= cand.shape[0]:
        j = 0
        for d in range(dim):
            if (row[d] & F32_INF) != F32_INF and abs(fv[d]) > mthr:
                cand[j] = d
                j += 1
        for i in range(nc):
            c = cand[i]
            a = np.float64(abs(fv[c]))
            below = 0
            for d in range(dim):
                ok = (row[d] & F32_INF) != F32_INF
                below += 1 if ok and mratio * abs(fv[d]) <= a else 0
            if below >= need:
                cnt += 1
                mcol[c] += 1
        return cnt
    j = 0
    for d in range(dim):
        if (row[d] & F32_INF) != F32_INF:
            fbuf[j] = abs(fv[d])
            j += 1
    med = np.float64(lower_median(fbuf, j))
    for d in range(dim):
        if (row[d] & F32_INF) != F32_INF:
            a = abs(fv[d])
            if a > mthr and a >= mratio * med:
                cnt += 1
                mcol[d] += 1
    return cnt


@nb.njit(parallel=True, cache=True, nogil=True, boundscheck=False, fastmath=FM)
def row_pass(
    raw: np.ndarray,  # (R, D) bit patterns: uint16 (bfloat16) or uint32 (float32)
    valid: np.ndarray,
    nchunks: int,
    channels: bool,
    fused_moments: bool,
    ref: np.ndarray,  # (D,) float64 reference of the power sums (fused_moments)
    massive: bool,
    mthr: float,
    mratio: float,
    per_row_sums: np.ndarray,  # (4, R) float64: sum x, sum x^2, sum x^4, sum |x|
    per_row_ext: np.ndarray,  # (3, R) float32: max, min, max |x|
    per_row_counts: np.ndarray,  # (2, R) int64: counted entries, massive entries
    cn: np.ndarray,  # (nchunks, D) counted entries of rows taking the float64 path
    fin: np.ndarray,  # (nchunks,) rows of the float32 path (each counts once per channel)
    csum: np.ndarray,  # (nchunks, 3, D) float64: sum x, sum x^2, sum |x|
    cmaxb: np.ndarray,  # (nchunks, D) uint32 bit patterns of max |x|
    pw: np.ndarray,  # (nchunks, 4, D) float64 power sums of x - ref (fused_moments)
    mcol: np.ndarray,
    hist: np.ndarray,  # (nchunks, NBINS) int32 scratch: zero on entry, left zero
    hist_out: np.ndarray,  # (NBINS,) int64: the batch's |x| histogram is added here
    bad: np.ndarray,  # (nchunks, 3)
) -> None:
    rows, dim = raw.shape
    span = np.empty((nchunks, 2), dtype=np.int64)  # bins touched by each chunk: lo, hi
    per = (rows + nchunks - 1) // nchunks
    ref_ok = True
    if fused_moments:
        for d in range(dim):
            ref_ok = ref_ok and abs(ref[d]) < _F32_SAFE
    for c in nb.prange(nchunks):
        h = hist[c]
        fbuf = np.empty(dim, dtype=np.float32)
        cand = np.empty(16, dtype=np.int64)
        row = np.empty(dim, dtype=np.uint32)  # one widened row, for the per-entry paths
        fv = row.view(np.float32)
        slots = np.empty(4, dtype=np.int64)  # rows waiting for the four-row block path
        cb = np.zeros((3, dim if channels else 1), dtype=np.float32)
        pb = np.zeros((4, dim if fused_moments else 1), dtype=np.float32)
        ref32 = np.empty(dim if fused_moments else 1, dtype=np.float32)
        if fused_moments:
            for d in range(dim):
                ref32[d] = ref[d]
        slot = 0
        inblk = 0
        lo_c = hist.shape[1]
        hi_c = 0
        for r in range(c * per, min(rows, (c + 1) * per)):
            if not valid[r]:
                continue
            t1, a2, a4, aa, mx, mn, am, hi, lo = _row_stats(raw[r])
            # a finite sum means no NaN/Inf in the row (an overflow of the float32 sum only
            # sends the row down the float64 path); so does |x| >= 2^24 (float32 powers)
            small = np.isfinite(t1) and am < _F32_SAFE and ref_ok
            if small:
                _hist_row(raw[r], h)
                hi_c = max(hi_c, hi)
                lo_c = min(lo_c, lo)
                n = dim
                a1 = np.float64(t1)
                fin[c] += 1
            else:
                lo_c, hi_c = 0, hist.shape[1] - 1
                widen(raw[r], row)
                n, a1, a2, a4, aa, mx, mn, am = _entries_f64(
                    row,
                    fv,
                    channels,
                    fused_moments,
                    ref,
                    cn[c],
                    csum[c],
                    cmaxb[c],
                    pw[c],
                    h,
                    bad[c],
                )
            per_row_counts[0, r] = n
            per_row_sums[0, r] = a1
            per_row_sums[1, r] = a2
            per_row_sums[2, r] = a4
            per_row_sums[3, r] = aa
            per_row_ext[0, r] = mx
            per_row_ext[1, r] = mn
            per_row_ext[2, r] = am
            if massive and n > 0 and am > mthr:
                if small:
                    widen(raw[r], row)
                per_row_counts[1, r] = _massive_row(row, fv, am, mthr, mratio, fbuf, cand, mcol[c])
            if small and channels:
                slots[slot] = r
                slot += 1
                if slot == 4:
                    q0, q1, q2, q3 = raw[slots[0]], raw[slots[1]], raw[slots[2]], raw[slots[3]]
                    _channels_4(q0, q1, q2, q3, cb, cmaxb[c])
                    if fused_moments:
                        _powers_4(q0, q1, q2, q3, ref32, pb)
                    slot = 0
                    inblk += 4
                    if inblk >= _BLOCK:
                        _flush(cb, csum[c])
                        if fused_moments:
                            _flush(pb, pw[c])
                        inblk = 0
        if slot > 0:
            _last_rows(raw, slots[:slot], fused_moments, ref32, cb, pb, cmaxb[c])
        _flush(cb, csum[c])
        if fused_moments:
            _flush(pb, pw[c])
        span[c, 0] = lo_c
        span[c, 1] = hi_c
    # only the bins a chunk touched (bin 0, then its smallest to its largest non-zero |x|)
    for c in range(nchunks):
        hist_out[0] += hist[c, 0]
        hist[c, 0] = 0
        for b in range(max(span[c, 0], 1), span[c, 1] + 1):
            hist_out[b] += hist[c, b]
            hist[c, b] = 0


@nb.njit(parallel=True, cache=True, nogil=True, boundscheck=False, fastmath=FM)
def power_pass(
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
            widen(raw[r], row)
            for d in range(dim):
                e = np.float64(fv[d]) - mean[d]
                if not np.isfinite(e):
                    continue
                e2 = e * e
                o[0, d] += e
                o[1, d] += e2
                o[2, d] += e2 * e
                o[3, d] += e2 * e2
