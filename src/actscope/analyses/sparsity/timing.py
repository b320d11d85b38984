"""Timing helpers shared by the sparse-speed benchmarks: results, threads, conditions.

Every timing is taken twice: wall clock (what a user waits for) and the thread's CPU time
(``time.thread_time``; the work done, which stays meaningful when other processes share the
cores). Both are reported with the load average, so a reader can tell whether a wall-clock
figure was taken on a busy machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch


@dataclass
class SpeedResult:
    """Tables of a benchmark and the conditions it ran under."""

    table: pd.DataFrame
    numerics: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)


class threads:
    """Set ``torch.set_num_threads(n)`` inside the block (None = leave as is)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def conditions() -> dict[str, Any]:
    """Thread count, CPU count and load average, recorded next to every timing."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": load[0],
        "loadavg_5m": load[1],
        "torch": torch.__version__,
    }


def sweep_time(fn: Callable[[int], Any], n: int) -> tuple[float, float]:
    """Wall and thread-CPU seconds per call of ``fn(0), ..., fn(n - 1)``."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n, (time.thread_time() - c0) / n
