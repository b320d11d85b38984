"""Streaming, mergeable statistics of activations: ``update`` per batch, ``merge``, ``result``.

:class:`SiteStats` computes every per-site statistic (moments, extremes with coordinates,
quantiles, massive activations, per-channel and per-domain statistics) from plain tensors;
:mod:`actscope.stats.tables` turns its results into tidy tables. The formulas are in the
docstrings of :mod:`actscope.stats.site` and of the modules it names.
"""

from actscope.stats.coords import Coords, Reducer, StatsError
from actscope.stats.scratch import release as release_buffers
from actscope.stats.site import SiteStats, StatsOptions
from actscope.stats.tables import event_rows, events_table, result_rows, results_table

__all__ = [
    "Coords",
    "Reducer",
    "SiteStats",
    "StatsError",
    "StatsOptions",
    "event_rows",
    "events_table",
    "release_buffers",
    "result_rows",
    "results_table",
]
