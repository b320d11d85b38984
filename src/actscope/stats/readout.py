"""Final values of :class:`~actscope.stats.site.SiteStats` from host copies of its state.

Every function takes numpy arrays (one transfer per state tensor) and returns plain Python
numbers, numpy arrays and dicts; the formulas are listed in :mod:`actscope.stats.site`.

Per-row sums kept by ``SiteStats`` (site-wide and per domain) are indexed by the ``ROW_*``
constants: valid rows, counted entries, sum x, sum x^2, sum |x|, sum of defined token
kurtoses, defined token kurtoses, massive entries (per-token median), rows with one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from actscope.stats.histogram import REL_ERROR, AbsHistogram, bin_lower, snap_to_edge

__all__ = [
    "ROW_COLUMNS",
    "channel_kurtosis_result",
    "channels_result",
    "domains_result",
    "extremes_result",
    "histogram_result",
    "massive_layer_counts",
    "massive_result",
    "moments_result",
]

ROW_COLUMNS = 9
ROWS, COUNT, S1, S2, SABS, KSUM, KN, MASS, MROWS = range(ROW_COLUMNS)
_MOMENT_KEYS = ("mean", "std", "mean_abs", "mean_sq", "min", "max")


def moments_result(rs: np.ndarray, extrema: np.ndarray) -> dict[str, Any]:
    """Mean, std, mean |x|, mean x^2, signed min/max, token kurtosis mean/max/count.

    ``extrema`` holds ``-min``, ``max`` and the largest token kurtosis.
    """
    n, kn = rs[COUNT], rs[KN]
    out: dict[str, Any] = dict.fromkeys(_MOMENT_KEYS, math.nan)
    if n > 0:
        mean = rs[S1] / n
        out.update(
            mean=float(mean),
            std=float(math.sqrt(max(rs[S2] / n - mean * mean, 0.0))),
            mean_abs=float(rs[SABS] / n),
            mean_sq=float(rs[S2] / n),
            min=float(-extrema[0]),
            max=float(extrema[1]),
        )
    out["kurtosis_token_mean"] = float(rs[KSUM] / kn) if kn > 0 else math.nan
    out["kurtosis_token_max"] = float(extrema[2]) if kn > 0 else math.nan
    out["kurtosis_tokens"] = int(kn)
    return out


def extremes_result(events: dict[str, np.ndarray]) -> dict[str, Any]:
    """Top-K events, ``top1..3`` and ``max_abs`` with its coordinates (-1 when empty)."""
    vals = events["value"].astype(np.float64)
    out: dict[str, Any] = {"events": events}
    for i in range(3):
        out[f"top{i + 1}"] = float(vals[i]) if vals.size > i else math.nan
    out["max_abs"] = out["top1"]
    for f in ("sample_id", "position", "token_id", "channel", "domain_id"):
        out[f"max_abs_{f}"] = int(events[f][0]) if vals.size else -1
    return out


def histogram_result(
    hist: np.ndarray, exact: bool, quantiles: Sequence[float], near_zero_eps: float
) -> dict[str, Any]:
    """Quantiles, lower median, zeros and near-zero counts and fractions (of the count)."""
    n = int(hist.sum())
    qs = AbsHistogram.quantiles(hist, quantiles, exact)
    b_med = AbsHistogram.lower_median_bin(hist)
    eps = snap_to_edge(near_zero_eps)
    near = AbsHistogram.count_below(hist, eps)
    zeros = int(hist[0])
    return {
        "quantiles": {f"p{100 * q:g}": float(v) for q, v in zip(quantiles, qs, strict=True)},
        "quantile_rel_error": 0.0 if exact else REL_ERROR,
        "median_abs": float(AbsHistogram.values(np.array([b_med]), exact)[0]) if n else math.nan,
        "zeros": zeros,
        "zero_frac": zeros / n if n else math.nan,
        "near_zero": near,
        "near_zero_frac": near / n if n else math.nan,
        "near_zero_eps": eps,
    }


def massive_layer_counts(
    hist: np.ndarray, exact: bool, abs_threshold: float, ratio: float
) -> tuple[int, int]:
    """Entries with ``|a| > abs_threshold`` and ``|a| >= ratio * M`` (M: lower median of all).

    Exact bins: ``(count, count)``. Otherwise ``(lower, upper)`` bounds: a bin counts in the
    lower bound when every value it may hold qualifies for every median its bin allows, in the
    upper bound when some value may qualify.
    """
    b_med = AbsHistogram.lower_median_bin(hist)
    if b_med < 0:
        return 0, 0
    bins = np.arange(hist.size)
    lo, hi = bin_lower(bins), bin_lower(bins + 1)
    if exact:
        count = int(hist[(lo > abs_threshold) & (lo >= ratio * lo[b_med])].sum())
        return count, count
    lower = int(hist[(lo > abs_threshold) & (lo >= ratio * hi[b_med])].sum())
    upper = int(hist[(hi > abs_threshold) & (hi > ratio * lo[b_med])].sum())
    return lower, upper


def massive_result(
    rs: np.ndarray,
    per_channel: np.ndarray,
    hist: np.ndarray | None,
    exact: bool,
    abs_threshold: float,
    ratio: float,
) -> dict[str, Any]:
    """Per-token-median counts, massive channels (count desc), layer-wide counts if hist."""
    ids = np.flatnonzero(per_channel)
    ids = ids[np.lexsort((ids, -per_channel[ids]))]
    out: dict[str, Any] = {
        "massive_token_count": int(rs[MASS]),
        "massive_token_rows": int(rs[MROWS]),
        "massive_channels": {int(c): int(per_channel[c]) for c in ids},
    }
    if hist is not None:
        lower, upper = massive_layer_counts(hist, exact, abs_threshold, ratio)
        out["massive_layer_count"] = lower
        out["massive_layer_count_upper"] = upper
    return out


def channels_result(sums: np.ndarray, count: np.ndarray, max_abs: np.ndarray) -> dict[str, Any]:
    """Per-channel count, max |x|, mean x, mean x^2, sum x^2, mean |x| (NaN where empty).

    ``sums``: (3, D) sum x, sum x^2, sum |x|.
    """
    has = count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(has, sums / count, np.nan)
    return {
        "channel_count": count,
        "channel_max_abs": np.where(has, max_abs, np.nan).astype(np.float32),
        "channel_mean": mean[0],
        "channel_mean_sq": mean[1],
        "channel_sum_sq": sums[1],
        "channel_mean_abs": mean[2],
    }


def channel_kurtosis_result(k: np.ndarray) -> dict[str, Any]:
    """Per-channel excess kurtosis with its mean, max and argmax over defined channels."""
    has = np.isfinite(k)
    return {
        "channel_kurtosis": k,
        "channel_kurtosis_mean": float(k[has].mean()) if has.any() else math.nan,
        "channel_kurtosis_max": float(k[has].max()) if has.any() else math.nan,
        "channel_kurtosis_argmax": int(np.nanargmax(k)) if has.any() else -1,
    }


def domains_result(
    sums: np.ndarray, max_abs: np.ndarray, max_domains: int, kurtosis: bool, massive: bool
) -> dict[int, dict[str, float]]:
    """Per domain with rows: rows, count, max |x|, mean |x| (+ kurtosis, massive count).

    Row ``max_domains`` of ``sums`` is the pool of out-of-range ids, reported as domain -1.
    """
    out: dict[int, dict[str, float]] = {}
    for i in np.flatnonzero(sums[:, ROWS] > 0):
        row = sums[i]
        entry: dict[str, float] = {
            "rows": int(row[ROWS]),
            "count": int(row[COUNT]),
            "max_abs": float(max_abs[i]) if row[COUNT] > 0 else math.nan,
            "mean_abs": float(row[SABS] / row[COUNT]) if row[COUNT] > 0 else math.nan,
        }
        if kurtosis:
            entry["kurtosis_token_mean"] = float(row[KSUM] / row[KN]) if row[KN] > 0 else math.nan
        if massive:
            entry["massive_count"] = int(row[MASS])
        out[-1 if i == max_domains else int(i)] = entry
    return out
