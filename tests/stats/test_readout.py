"""Tests of actscope.stats.readout: layer-wide massive bounds, empty channels and domains."""

from __future__ import annotations

import math

import numpy as np
import torch

from actscope.stats.histogram import AbsHistogram
from actscope.stats.readout import (
    ROW_COLUMNS,
    ROWS,
    channel_kurtosis_result,
    channels_result,
    domains_result,
    extremes_result,
    massive_layer_counts,
    moments_result,
)


def _counts(a: torch.Tensor, exact: bool) -> np.ndarray:
    h = AbsHistogram(torch.device("cpu"))
    h.add(a.float().contiguous(), 0, exact)
    return h.numpy()


def _direct(a: np.ndarray) -> int:
    med = np.sort(a)[(a.size + 1) // 2 - 1]
    return int(((a > 100) & (a >= 1000 * med)).sum())


def test_layer_massive_count_exact_for_bfloat16_and_bounded_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(20_000, generator=g) * 0.2).abs()
    # planted values around both thresholds: 100 and 1000 x median (~135)
    a[:400] = torch.linspace(90.0, 200.0, 400)
    bf = a.bfloat16().float()
    exact = massive_layer_counts(_counts(bf, True), True, 100.0, 1000.0)
    assert exact[0] == exact[1] == _direct(bf.double().numpy()) > 0
    lower, upper = massive_layer_counts(_counts(a, False), False, 100.0, 1000.0)
    truth = _direct(a.double().numpy())
    assert lower <= truth <= upper
    assert lower < upper  # the planted values straddle bins: the bounds are not trivial
    assert massive_layer_counts(np.zeros(1 << 15, dtype=np.int64), True, 100.0, 1000.0) == (0, 0)


def test_empty_state_values_are_nan_not_errors() -> None:
    rs = np.zeros(ROW_COLUMNS)
    mom = moments_result(rs, np.full(3, -np.inf))
    assert math.isnan(mom["mean"]) and math.isnan(mom["kurtosis_token_mean"])
    assert mom["kurtosis_tokens"] == 0
    ch = channels_result(np.zeros((3, 2)), np.array([0, 4]), np.array([0.0, 2.0], dtype=np.float32))
    assert math.isnan(ch["channel_mean"][0]) and ch["channel_max_abs"][1] == 2.0
    kurt = channel_kurtosis_result(np.array([np.nan, np.nan]))
    assert kurt["channel_kurtosis_argmax"] == -1 and math.isnan(kurt["channel_kurtosis_max"])
    sums = np.zeros((3, ROW_COLUMNS))
    sums[2, ROWS] = 5  # only the pooled row (max_domains = 2) has rows, none counted
    dom = domains_result(sums, np.full(3, -1.0), 2, True, True)
    assert list(dom) == [-1] and math.isnan(dom[-1]["max_abs"])
    ev = {
        f: np.zeros(0)
        for f in ("value", "sample_id", "position", "token_id", "channel", "domain_id")
    }
    ext = extremes_result(ev)
    assert math.isnan(ext["max_abs"]) and ext["max_abs_channel"] == -1
