"""Thresholds read from score histograms: ``t(s) = Q_s(score)``, level 0 keeps everything."""

from __future__ import annotations

import numpy as np

from actscope.stats.histogram import AbsHistogram

KEEP_ALL = -1.0
"""Threshold of level 0: every score (>= 0) passes ``score > -1``."""


def quantile_threshold(hist: tuple[np.ndarray, bool], level: float) -> float:
    """``Q_level`` of the scores counted in ``(counts, exact)``; ``KEEP_ALL`` for level <= 0.

    Entries with ``score <= Q_level`` (a fraction ``level`` of the counted entries, up to the
    histogram's precision and ties) are the ones a unit with this threshold drops.
    """
    if level <= 0.0:
        return KEEP_ALL
    counts, exact = hist
    return float(AbsHistogram.quantiles(counts, [min(level, 1.0)], exact)[0])
