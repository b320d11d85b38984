"""Small numba helpers and constants shared by the fused kernels."""

from __future__ import annotations

import numba as nb
import numpy as np

F32_INF = np.uint32(0x7F800000)
FM = {"reassoc", "contract", "arcp"}  # vectorise reductions; keep NaN/Inf semantics


ABS = np.uint32(0x7FFFFFFF)


@nb.njit(cache=True, inline="always")
def lower_median(buf: np.ndarray, n: int) -> float:
    k = (n + 1) // 2 - 1
    part = np.partition(buf[:n], k)
    return part[k]


@nb.njit(cache=True, boundscheck=False, inline="always")
def widen(raw: np.ndarray, out: np.ndarray) -> None:
    """float32 bit patterns of one row: bf16 (uint16) shifted left by 16, or copied."""
    if raw.itemsize == 2:
        for d in range(raw.shape[0]):
            out[d] = np.uint32(raw[d]) << np.uint32(16)
    else:
        for d in range(raw.shape[0]):
            out[d] = raw[d]


@nb.njit(cache=True, inline="always")
def bits_to_f32(b: np.uint32) -> float:
    buf = np.empty(1, dtype=np.uint32)
    buf[0] = b
    return buf.view(np.float32)[0]


@nb.njit(cache=True, inline="always")
def key_to_f32(k: np.int32) -> float:
    """Float of a monotone key (the map is its own inverse)."""
    buf = np.empty(1, dtype=np.int32)
    buf[0] = k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF))
    return buf.view(np.float32)[0]
