"""Small numba helpers and constants shared by the fused kernels."""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

F32_INF = np.uint32(0x7F800000)
FM = {"reassoc", "contract", "arcp"}  # vectorise reductions; keep NaN/Inf semantics


ABS = np.uint32(0x7FFFFFFF)


@nb.njit(cache=True, inline="always")
def lower_median(buf: np.ndarray, n: int) -> float:
    k = (n + 1) // 2 - 1
    part = np.partition(buf[:n], k)
    return part[k]


@nb.njit(cache=True, boundscheck=False)
def widen(raw: np.ndarray, out: np.ndarray) -> None:
    """float32 bit patterns of one row: bf16 (uint16) shifted left by 16, or copied."""
    if raw.itemsize == 2:
        for d in range(raw.shape[0]):
            out[d] = np.uint32(raw[d]) << np.uint32(16)
    else:
        for d in range(raw.shape[0]):
            out[d] = raw[d]


@intrinsic
def as_f32(typingctx: Any, bits: Any) -> Any:
    """Reinterpret a 32-bit integer as float32 (a register bitcast: no array, no allocation)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@nb.njit(cache=True, inline="always")
def bits_to_f32(b: np.uint32) -> float:
    return as_f32(np.uint32(b))


@nb.njit(cache=True, inline="always")
def key_to_f32(k: np.int32) -> float:
    """Float of a monotone key ``b ^ ((b >> 31) & 0x7FFFFFFF)`` (the map is its own inverse)."""
    return as_f32(np.int32(k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF))))


@nb.njit(cache=True, inline="always")
def key16_to_f32(k: np.int16) -> float:
    """Float of a monotone bfloat16 key ``b ^ ((b >> 15) & 0x7FFF)`` (int16 ``b``)."""
    b = np.int32(np.int16(k ^ ((k >> np.int16(15)) & np.int16(0x7FFF))))
    return as_f32(np.int32(b << np.int32(16)))
