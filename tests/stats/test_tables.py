"""Tests of actscope.stats.tables: tidy statistic rows and event rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from actscope.stats import Coords, SiteStats, StatsOptions
from actscope.stats.tables import (
    EVENT_COLUMNS,
    STAT_COLUMNS,
    event_rows,
    events_table,
    result_rows,
    results_table,
)


def _result() -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, generator=g)
    x[0, 2] = 3072.0
    c = Coords.from_grid(
        torch.zeros(2, 6, dtype=torch.long), torch.tensor([0, 1]), torch.tensor([0, 1])
    )
    s = SiteStats(StatsOptions(top_k=4))
    s.update(x.bfloat16(), torch.ones(12, dtype=torch.bool), c)
    return s.result()


def test_result_rows_scalars_quantiles_domains_channels() -> None:
    res = _result()
    df = result_rows("layers.0.resid_post", res)
    assert list(df.columns) == STAT_COLUMNS
    assert (df["site"] == "layers.0.resid_post").all()
    one = df.set_index("statistic")
    assert one.loc["max_abs", "value"] == 3072.0
    assert one.loc["abs_p99.9", "value"] == res["quantiles"]["p99.9"]
    assert pd.isna(one.loc["mean", "domain"]) and pd.isna(one.loc["mean", "channel"])
    mass = df[df["statistic"] == "massive_channel_count"]
    assert mass["channel"].tolist() == [2] and mass["value"].tolist() == [1.0]
    dom = df[df["statistic"] == "domain_max_abs"]
    assert sorted(dom["domain"].tolist()) == [0, 1]
    assert dom.set_index("domain").loc[0, "value"] == 3072.0
    assert "channel_max_abs" not in set(df["statistic"])
    full = result_rows("s", res, channels=True)
    ch = full[full["statistic"] == "channel_max_abs"]
    assert ch["channel"].tolist() == list(range(6))
    np.testing.assert_array_equal(ch["value"].to_numpy(), res["channel_max_abs"].astype(np.float64))


def test_event_rows_and_tables() -> None:
    res = _result()
    ev = event_rows("s", res)
    assert list(ev.columns) == EVENT_COLUMNS
    assert ev["rank"].tolist() == [1, 2, 3, 4]
    first = ev.iloc[0]
    assert (first["value"], first["sample_id"], first["position"], first["channel"]) == (
        3072.0,
        0,
        0,
        2,
    )
    both = events_table({"a": res, "b": res})
    assert len(both) == 8 and set(both["site"]) == {"a", "b"}
    table = results_table({"a": res, "b": res})
    assert len(table) == 2 * len(result_rows("a", res))
    assert results_table({}).empty and events_table({}).empty
    assert event_rows("s", {}).empty
