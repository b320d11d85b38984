"""Tidy tables from :meth:`SiteStats.result` dictionaries (pandas DataFrames).

Statistics table, one row per value, columns ``site``, ``statistic``, ``value`` (float64),
``domain`` and ``channel`` (nullable Int64, ``<NA>`` when the value is not per domain or per
channel):

- every scalar of the result (``mean``, ``max_abs``, ``massive_token_count``...);
- quantiles as ``abs_p50``, ``abs_p99.9``...;
- ``massive_channel_count`` per channel (channels with at least one massive entry);
- the per-domain values prefixed ``domain_`` (``domain_max_abs``...) with ``domain`` set
  (``-1`` is the pool of out-of-range domain ids);
- with ``channels=True``, every per-channel array (``channel_max_abs``...) with ``channel``
  set: D rows per statistic, hence off by default.

Events table, one row per top-K event: ``site``, ``rank`` (1 = largest), ``value``,
``sample_id``, ``position``, ``token_id``, ``channel``, ``domain_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from actscope.stats.topk import EVENT_FIELDS

__all__ = [
    "EVENT_COLUMNS",
    "STAT_COLUMNS",
    "event_rows",
    "events_table",
    "result_rows",
    "results_table",
]

STAT_COLUMNS = ["site", "statistic", "value", "domain", "channel"]
EVENT_COLUMNS = ["site", "rank", *EVENT_FIELDS]


def result_rows(site: str, result: Mapping[str, Any], channels: bool = False) -> pd.DataFrame:
    """The statistics of one site's result as tidy rows (see module docstring)."""
    names: list[str] = []
    values: list[float] = []
    domains: list[int | None] = []
    chans: list[int | None] = []

    def add(name: str, value: float, domain: int | None = None, channel: int | None = None) -> None:
        names.append(name)
        values.append(float(value))
        domains.append(domain)
        chans.append(channel)

    for key, value in result.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float | np.integer | np.floating):
            add(key, value)
    for label, value in result.get("quantiles", {}).items():
        add(f"abs_{label}", value)
    for channel, count in result.get("massive_channels", {}).items():
        add("massive_channel_count", count, channel=int(channel))
    for domain, stats in result.get("domains", {}).items():
        for key, value in stats.items():
            add(f"domain_{key}", value, domain=int(domain))
    frame = _frame(site, names, values, domains, chans)
    if not channels:
        return frame
    parts = [frame]
    for key, value in result.items():
        if key.startswith("channel_") and isinstance(value, np.ndarray):
            n = value.shape[0]
            parts.append(
                pd.DataFrame(
                    {
                        "site": site,
                        "statistic": key,
                        "value": value.astype(np.float64),
                        "domain": pd.array([pd.NA] * n, dtype="Int64"),
                        "channel": pd.array(np.arange(n), dtype="Int64"),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def event_rows(site: str, result: Mapping[str, Any]) -> pd.DataFrame:
    """The top-K events of one site's result, one row per event, rank 1 = largest."""
    events = result.get("events", {f: np.zeros(0) for f in EVENT_FIELDS})
    n = len(events["value"])
    data: dict[str, Any] = {"site": [site] * n, "rank": np.arange(1, n + 1, dtype=np.int64)}
    data["value"] = np.asarray(events["value"], dtype=np.float64)
    for f in EVENT_FIELDS[1:]:
        data[f] = np.asarray(events[f], dtype=np.int64)
    return pd.DataFrame(data, columns=EVENT_COLUMNS)


def results_table(results: Mapping[str, Mapping[str, Any]], channels: bool = False) -> pd.DataFrame:
    """:func:`result_rows` of every ``{site: result}``, concatenated."""
    frames = [result_rows(site, res, channels) for site, res in results.items()]
    if not frames:
        return _frame("", [], [], [], []).iloc[0:0]
    return pd.concat(frames, ignore_index=True)


def events_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`event_rows` of every ``{site: result}``, concatenated."""
    frames = [event_rows(site, res) for site, res in results.items()]
    if not frames:
        return event_rows("", {})
    return pd.concat(frames, ignore_index=True)


def _frame(
    site: str,
    names: list[str],
    values: list[float],
    domains: list[int | None],
    chans: list[int | None],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "site": [site] * len(names),
            "statistic": names,
            "value": np.asarray(values, dtype=np.float64),
            "domain": pd.array(domains, dtype="Int64"),
            "channel": pd.array(chans, dtype="Int64"),
        },
        columns=STAT_COLUMNS,
    )
