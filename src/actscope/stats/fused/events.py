"""Top-K events of one batch (numba), with the integer keys of :mod:`actscope.stats.topk`."""

from __future__ import annotations

import numba as nb
import numpy as np

from actscope.stats.coords import Coords
from actscope.stats.fused._common import as_f32


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
def topk_events(
    raw: np.ndarray, row_max: np.ndarray, row_ok: np.ndarray, rank: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` entries of |x| of a finite batch under the total order of
    :mod:`actscope.stats.topk`. ``raw``: the (R, D) bit patterns of
    :func:`~actscope.stats.fused.partials.raw_bits` (``Partials.bits``); ``row_max`` float32
    and ``row_ok`` bool per row; ``rank`` int64.

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
    for j in range(kr):  # candidates by descending row max
        r = cand[j]
        if r < 0:
            continue
        if np.int64(rm[r]) < keys[k - 1] >> 31:
            break  # no entry of this row, or of a later one, can enter (-1 >> 31 = -1)
        base = order[j] * dim
        for d in range(dim):
            bits = (np.int64(raw[r, d]) << shift) & 0x7FFFFFFF
            if bits >= keys[k - 1] >> 31:  # cheap test first: only such entries can enter
                key = (bits << 31) | (low - (base + d))
                if key > keys[k - 1]:
                    _insert(keys, erow, ech, key, r, d)
    vals = np.full(k, -1.0, np.float32)
    for i in range(k):
        if keys[i] >= 0:
            vals[i] = as_f32(np.int32(keys[i] >> 31))
    return vals, erow, ech


def event_fields(
    vals: np.ndarray, rows: np.ndarray, chans: np.ndarray, coords: Coords, floor: float = 0.0
) -> tuple[np.ndarray, ...]:
    """Host arrays in :data:`actscope.stats.topk.EVENT_FIELDS` order for the events of
    :func:`topk_events` whose value is ``>= max(floor, 0)`` (empty slots are -1)."""
    keep = vals >= max(floor, 0.0)
    sample, position, token, domain = coords.host()[:, rows[keep]]
    return vals[keep], sample, position, token, chans[keep], domain
