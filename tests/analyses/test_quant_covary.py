"""Rank correlations between site statistics and SQNR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from actscope.analyses.quant import covariation_frame, rank_correlations
from actscope.analyses.quant.covary import run_covary


def _frames(model: str, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    mx = np.exp(rng.normal(0, 2, n))
    sqnr = 40 - 5 * np.log10(mx) + rng.normal(0, 0.5, n)
    sites = [f"{'down_in' if i % 2 else 'resid_post'}.{i // 2}" for i in range(n)]
    kinds = [s.split(".")[0] for s in sites]
    sens = pd.DataFrame(
        {
            "model": model,
            "site": sites,
            "group": sites,
            "kind": kinds,
            "layer": [i // 2 for i in range(n)],
            "quantizer": "int8-sym-tensor-max",
            "sqnr_db": sqnr,
            "rel_mse": 10 ** (-sqnr / 10),
        }
    )
    # an aliased site (same tensor) must not be counted twice; an inf SQNR is dropped
    extra = sens.iloc[[0]].assign(site="alias.0")
    inf = sens.iloc[[1]].assign(site="zero.0", group="zero.0", sqnr_db=np.inf)
    sens = pd.concat([sens, extra, inf], ignore_index=True)
    st = pd.DataFrame(
        {
            "model": model,
            "site": sites,
            "group": sites,
            "max_abs": mx,
            "kurtosis": rng.uniform(0, 10, n),
            "crest": mx / 0.5,
        }
    )
    return sens, st


def test_frame_and_correlations() -> None:
    s1, t1 = _frames("a", 20, 0)
    s2, t2 = _frames("b", 16, 1)
    df = covariation_frame(pd.concat([s1, s2]), pd.concat([t1, t2]))
    assert len(df) == 36
    corr = rank_correlations(df)
    sel = (corr.model == "a") & (corr.scope == "all") & (corr.statistic == "max_abs")
    row = corr[sel & (corr.target == "sqnr_db")].iloc[0]
    sub = df[df.model == "a"]
    ref = stats.spearmanr(sub.max_abs, sub.sqnr_db)
    assert row.rho == pytest.approx(ref.statistic) and row.p_value == pytest.approx(ref.pvalue)
    assert row.rho < -0.8
    assert {"pooled"} <= set(corr.model) and {"down_in", "resid_post"} <= set(corr.scope)


def test_run_covary_pools_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, seed in (("a", 0), ("b", 1)):
        s, t = _frames(name, 14, seed)
        (tmp_path / name / "tables").mkdir(parents=True)
        s.to_parquet(tmp_path / name / "tables" / "sensitivity.parquet")
        t.to_parquet(tmp_path / name / "tables" / "site_stats.parquet")
        (tmp_path / name / "manifest.json").write_text('{"command": "quant"}')
    corr = run_covary([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert "pooled" in set(corr.model)
    assert (tmp_path / "out" / "report.html").exists()
    assert (tmp_path / "out" / "tables" / "points.parquet").exists()
