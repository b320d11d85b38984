"""Do activation maxima co-vary with low-bit reconstruction error? Rank correlations.

The claim tested (Measuring Maximum Activations in Open LLMs): sites with larger measured
maxima quantize worse. For one quantizer (default INT8 symmetric per-tensor with a static
max range), the Spearman rank correlation between a site statistic (``max_abs``,
``kurtosis``, and the crest factor ``max|x| / RMS``, which fixes the SQNR of a max-scaled
uniform grid: ``SQNR ~ 10 log10(3 qmax^2 / crest^2)`` for rounding noise) and a target:
the site's SQNR (every site), or the relative output error of the Linear reading it
(``out_rel_err``, Linear inputs only), over

* ``all``: every site of a model (one row per tensor: sites sharing one are counted once);
* ``<kind>``: one kind across layers (e.g. ``down_in`` over the 30 layers);
* ``pooled``: every site of every model given.

The claim holds when rho is clearly negative against SQNR (larger maxima, lower SQNR) and
positive against the output error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from actscope.errors import DataError

STATISTICS = ("max_abs", "kurtosis", "crest")
TARGETS = ("sqnr_db", "out_rel_err")
DEFAULT_QUANTIZER = "int8-sym-tensor-max"


def covariation_frame(
    sensitivity: pd.DataFrame, site_stats: pd.DataFrame, quantizer: str = DEFAULT_QUANTIZER
) -> pd.DataFrame:
    """One row per (model, group): statistics and the SQNR of ``quantizer``.

    Both frames carry a ``model`` column (one model per frame is fine: it is added if
    missing). Sites sharing a tensor (``group``) are counted once, under the group name.
    """
    sens = sensitivity if "model" in sensitivity else sensitivity.assign(model="model")
    st = site_stats if "model" in site_stats else site_stats.assign(model="model")
    sel = sens[sens.quantizer == quantizer]
    cols = ["model", "group", "kind", "layer", "sqnr_db", "rel_mse"]
    if "out_rel_err" in sel:
        cols.append("out_rel_err")
    sel = sel[sel.site == sel.group][cols]
    per = st[st.site == st.group][["model", "group", *STATISTICS]]
    df = sel.merge(per, on=["model", "group"], how="inner")
    return df[np.isfinite(df.sqnr_db)].reset_index(drop=True)


def rank_correlations(df: pd.DataFrame, min_n: int = 5) -> pd.DataFrame:
    """Spearman rho and its two-sided p-value of each statistic vs each target, per scope.

    Columns: model (``pooled`` for all models together), scope (``all`` or a kind), target
    (``sqnr_db`` or ``out_rel_err``), n, statistic, rho, p_value. Scopes with fewer than
    ``min_n`` finite pairs are skipped.
    """
    rows: list[dict[str, object]] = []
    scopes: list[tuple[str, str, pd.DataFrame]] = []
    for model, sub in df.groupby("model", sort=False):
        scopes.append((str(model), "all", sub))
        for kind, ks in sub.groupby("kind", sort=False):
            scopes.append((str(model), str(kind), ks))
    if df["model"].nunique() > 1:
        scopes.append(("pooled", "all", df))
    for model, scope, sub in scopes:
        for target in TARGETS:
            if target not in sub:
                continue
            for stat in STATISTICS:
                ok = sub[np.isfinite(sub[stat]) & np.isfinite(sub[target])]
                if len(ok) < min_n:
                    continue
                rho, p = _spearman(ok[stat].to_numpy(), ok[target].to_numpy())
                rows.append(
                    {
                        "model": model,
                        "scope": scope,
                        "target": target,
                        "n": len(ok),
                        "statistic": stat,
                        "rho": rho,
                        "p_value": p,
                    }
                )
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = ["model", "scope", "target", "n", "statistic", "rho", "p_value"]


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    res = sps.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def scatter_figure(df: pd.DataFrame, stats_shown: Sequence[str] = ("max_abs", "kurtosis")) -> Any:
    """Scatter of each statistic (log scale) against SQNR, one colour per model, rho in titles."""
    from actscope.report import new_figure

    fig, axes = new_figure(ncols=len(stats_shown), width=5.2, height=4.0)
    axes = np.atleast_1d(axes).ravel()
    markers = "osD^v<>"
    for ax, stat in zip(axes, stats_shown, strict=True):
        for i, (model, sub) in enumerate(df.groupby("model", sort=False)):
            ok = sub[np.isfinite(sub[stat]) & (sub[stat] > 0)]
            rho, _ = (
                _spearman(ok[stat].to_numpy(), ok.sqnr_db.to_numpy())
                if len(ok) > 2
                else (
                    math.nan,
                    math.nan,
                )
            )
            ax.scatter(
                ok[stat],
                ok.sqnr_db,
                s=12,
                alpha=0.7,
                marker=markers[i % len(markers)],
                label=f"{model} (rho={rho:.2f}, n={len(ok)})",
            )
        ax.set_xscale("log")
        ax.set_xlabel(stat.replace("_", " "))
        ax.set_ylabel("SQNR (dB)")
        ax.legend(fontsize=7)
    return fig


def run_covary(
    runs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    quantizer: str = DEFAULT_QUANTIZER,
) -> pd.DataFrame:
    """Pool quant run directories, write the correlation run ``out``, return the correlations."""
    from actscope.report import Report
    from actscope.runs import RunWriter

    sens, stats = [], []
    from actscope.analyses.rundirs import read_manifest

    for r in runs:
        read_manifest(r, "quant")
        tables = Path(r) / "tables"
        if not (tables / "sensitivity.parquet").exists():
            raise DataError(f"{r} is not a quant run directory (no tables/sensitivity.parquet)")
        sens.append(pd.read_parquet(tables / "sensitivity.parquet"))
        stats.append(pd.read_parquet(tables / "site_stats.parquet"))
    df = covariation_frame(pd.concat(sens), pd.concat(stats), quantizer)
    if df.empty:
        raise DataError(f"no site of the given runs was measured with quantizer '{quantizer}'")
    corr = rank_correlations(df)
    args = {"runs": [str(r) for r in runs], "quantizer": quantizer}
    with RunWriter(out, "covary", args, inputs=runs) as w:
        w.table("points", df)
        w.table("correlations", corr)
        overall = corr[corr.scope == "all"]
        w.json("summary.json", {"quantizer": quantizer, "correlations": overall.to_dict("records")})
        rep = Report(f"Co-variation of maxima and {quantizer} error", subtitle="actscope covary")
        rep.figure(scatter_figure(df), f"Site statistics vs {quantizer} SQNR", heading="Scatter")
        rep.table(overall, "Across all sites of each model (and pooled)", heading="Correlations")
        rep.table(corr[corr.scope != "all"], "Per site kind, across layers", max_rows=400)
        w.text("report.html", rep.render())
    return corr
