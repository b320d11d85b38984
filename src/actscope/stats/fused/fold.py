"""Adding one batch's partials to a reducer's state: per-row columns, per-domain sums,
extrema, and the per-chunk per-channel sums and counts (numba, in place)."""

from __future__ import annotations

import numba as nb
import numpy as np
from torch import Tensor

from actscope.stats.fused._common import bits_to_f32
from actscope.stats.fused.partials import Partials


@nb.njit(cache=True, boundscheck=False)
def _finish_rows(
    valid: np.ndarray,
    rs: np.ndarray,  # (4, R) float64 per-row sums (Partials.per_row_sums)
    rx: np.ndarray,  # (3, R) float32 per-row extrema (Partials.per_row_ext)
    rc: np.ndarray,  # (2, R) int64 per-row counts (Partials.per_row_counts)
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
    for r in range(rc.shape[1]):
        n = rc[0, r]
        ok = valid[r] and n > 0
        kt = 0.0
        kok = False
        if moments:
            nn = np.float64(max(n, 1))
            m1 = rs[0, r] / nn
            m2 = rs[1, r] / nn
            m4 = rs[2, r] / nn
            var = m2 - m1 * m1
            ratio = m4 / (var * var) if var != 0.0 else np.inf
            if var > 0.0 and np.isfinite(ratio):
                kt = max(ratio - 3.0, 0.0)
                kok = ok
            if ok:
                extrema[0] = max(extrema[0], -np.float64(rx[1, r]))
                extrema[1] = max(extrema[1], np.float64(rx[0, r]))
                if kok:
                    extrema[2] = max(extrema[2], kt)
        col[0] = 1.0 if valid[r] else 0.0
        col[1] = n
        col[2] = rs[0, r]
        col[3] = rs[1, r] if moments else 0.0
        col[4] = rs[3, r]
        col[5] = kt
        col[6] = 1.0 if kok else 0.0
        col[7] = rc[1, r]
        col[8] = 1.0 if rc[1, r] > 0 else 0.0
        for j in range(9):
            row_sums[j] += col[j]
        if domains:
            g = dom[r]
            for j in range(9):
                dom_sums[g, j] += col[j]
            if ok and rx[2, r] > dom_max[g]:
                dom_max[g] = rx[2, r]


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


@nb.njit(cache=True, boundscheck=False)
def _fold_chunks(
    cn: np.ndarray,
    fin: np.ndarray,
    csum: np.ndarray,
    cmaxb: np.ndarray,
    pw: np.ndarray,
    pref: np.ndarray,
    mcol: np.ndarray,
    bad: np.ndarray,
    flags: np.ndarray,  # bool: channels, channel moments, massive
    nonfinite: np.ndarray,
    ch_max: np.ndarray,
    ch_sums: np.ndarray,
    ch_count: np.ndarray,
    m_sums: np.ndarray,
    m_ref: np.ndarray,
    massive_ch: np.ndarray,
) -> None:
    """Per-chunk partials summed into the state arrays (in place)."""
    chunks = cn.shape[0]
    for c in range(chunks):
        for j in range(3):
            nonfinite[j] += bad[c, j]
    if flags[2]:
        for c in range(chunks):
            for d in range(mcol.shape[1]):
                massive_ch[d] += mcol[c, d]
    if not (flags[0] or flags[1]):
        return
    dim = cn.shape[1]
    rows = 0
    for c in range(chunks):
        rows += fin[c]
    n_col = np.empty(dim)
    for d in range(dim):
        n = rows
        mb = np.uint32(0)
        for c in range(chunks):
            n += cn[c, d]
            mb = max(mb, cmaxb[c, d])
        n_col[d] = n
        if flags[0]:
            ch_count[d] += n
            ch_max[d] = max(ch_max[d], bits_to_f32(mb))
            for j in range(3):
                for c in range(chunks):
                    ch_sums[j, d] += csum[c, j, d]
    if flags[1]:
        batch = np.zeros((5, dim))
        batch[0] = n_col
        for c in range(chunks):
            for j in range(4):
                for d in range(dim):
                    batch[j + 1, d] += pw[c, j, d]
        _add_shifted_sums(m_sums, m_ref, batch, pref)


def fold(
    p: Partials, valid: Tensor, dom: Tensor | None, moments: bool, state: dict[str, Tensor]
) -> None:
    """Add a batch's partials to the state tensors of a reducer (CPU, in place).

    ``state`` holds ``row_sums``, ``extrema`` and ``nonfinite``, plus, for the groups that are
    on: ``dom_sums``/``dom_max`` (domains), ``ch_max``/``ch_sums``/``ch_count`` (channels),
    ``m_sums``/``m_ref`` (channel moments: ``ChannelMoments.sums``/``ref``) and ``massive``
    (per-channel counts). The histogram is not here: the kernel adds it to the reducer's
    counts directly (``partials(..., hist_out=)``). Two numba calls, no temporaries.
    """
    g = state.get("dom_sums")
    _finish_rows(
        valid.numpy().astype(np.bool_, copy=False),
        p.per_row_sums,
        p.per_row_ext,
        p.per_row_counts,
        dom.numpy() if dom is not None else _NONE_I,
        moments,
        dom is not None,
        state["row_sums"].numpy(),
        g.numpy() if g is not None else _NONE_F2,
        state["dom_max"].numpy() if g is not None else _NONE_F32,
        state["extrema"].numpy(),
    )
    has = [k in state for k in ("ch_sums", "m_sums", "massive")]
    has[1] = has[1] and p.power_ref is not None

    def arr(key: str, empty: np.ndarray) -> np.ndarray:
        return state[key].numpy() if key in state else empty

    _fold_chunks(
        p.chunk_n,
        p.chunk_rows,
        p.chunk_sums,
        p.chunk_maxbits,
        p.chunk_power,
        p.power_ref if p.power_ref is not None else _NONE_F,
        p.chunk_massive,
        p.chunk_bad,
        np.array(has, dtype=np.bool_),
        state["nonfinite"].numpy(),
        arr("ch_max", _NONE_F32),
        arr("ch_sums", _NONE_F2),
        arr("ch_count", _NONE_I),
        arr("m_sums", _NONE_F2),
        arr("m_ref", _NONE_F),
        arr("massive", _NONE_I),
    )


_NONE_I = np.zeros(1, np.int64)
_NONE_F = np.zeros(1)
_NONE_F2 = np.zeros((1, 1))
_NONE_F32 = np.zeros(1, np.float32)
