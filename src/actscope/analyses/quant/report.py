"""HTML report and summary of a quant run: per-layer SQNR, clipping, co-variation, perplexity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from actscope.analyses.quant.covary import DEFAULT_QUANTIZER, covariation_frame, scatter_figure
from actscope.report import Report, new_figure

KEY_QUANTIZERS = (
    "int8-sym-tensor-max",
    "int8-sym-token-max",
    "int4-sym-token-max",
    "int4-sym-group128-max",
)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summary(res: Any) -> dict[str, Any]:
    """Headline numbers: worst sites, correlations, perplexities (JSON-ready)."""
    out: dict[str, Any] = {"model": res.model, "timings": res.timings}
    sens = res.sensitivity
    if len(sens):
        per_q = (
            sens[sens.site == sens.group]
            .groupby("quantizer")
            .agg(median_sqnr_db=("sqnr_db", "median"), median_out_rel_err=("out_rel_err", "median"))
        )
        out["quantizers"] = {
            q: {k: _finite(float(v)) for k, v in row.items()} for q, row in per_q.iterrows()
        }
        t = sens[(sens.quantizer == DEFAULT_QUANTIZER) & (sens.site == sens.group)]
        if len(t):
            worst = t.nsmallest(5, "sqnr_db")
            out["worst_int8_tensor_sites"] = [
                {"site": r.site, "sqnr_db": _finite(float(r.sqnr_db))} for r in worst.itertuples()
            ]
    if len(res.correlations):
        c = res.correlations[res.correlations.scope == "all"]
        out["correlations"] = [
            {k: _finite(v) for k, v in r.items()} for r in c.to_dict(orient="records")
        ]
    if res.perplexity is not None:
        p = res.perplexity
        out["perplexity"] = {
            "fp": float(p.loc[(p.scheme == "fp") & ~p.smoothing, "perplexity"].iloc[0]),
            "schemes": {
                r.scheme: float(r.perplexity)
                for r in p[~p.smoothing].itertuples()
                if r.scheme != "fp"
            },
            "best_smoothed": _best_smoothed(p),
        }
    return out


def _best_smoothed(p: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sm = p[p.smoothing & (p.scheme != "fp")]
    for scheme, sub in sm.groupby("scheme"):
        best = sub.loc[sub.perplexity.idxmin()]
        out[str(scheme)] = {
            "alpha": float(best.alpha),
            "perplexity": float(best.perplexity),
            "recovered": _finite(float(best.recovered)),
        }
    return out


def layer_figure(sens: pd.DataFrame, quantizers: tuple[str, ...] = KEY_QUANTIZERS) -> Any:
    """SQNR by layer, one panel per quantizer, one line per site kind."""
    qs = [q for q in quantizers if q in set(sens.quantizer)]
    fig, axes = new_figure(ncols=2, nrows=max(1, math.ceil(len(qs) / 2)), width=5.6, height=3.4)
    axes = np.atleast_1d(axes).ravel()
    for ax, q in zip(axes, qs, strict=False):
        sub = sens[(sens.quantizer == q) & sens.layer.notna()]
        for kind, ks in sub.groupby("kind", sort=False):
            ks = ks.sort_values("layer")
            ax.plot(ks.layer, ks.sqnr_db, marker=".", lw=1, label=str(kind))
        ax.set_title(q, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("SQNR (dB)")
    if qs:
        axes[0].legend(fontsize=6, ncol=2)
    for ax in axes[len(qs) :]:
        ax.set_visible(False)
    return fig


def clipping_figure(sens: pd.DataFrame) -> Any:
    """Median SQNR and output error over Linear-input sites vs the clip rule."""
    order = ["max", "p99.99", "p99.9", "p99", "mse"]
    lin = sens[sens.consumer.notna() & (sens.site == sens.group)]
    fig, (a1, a2) = new_figure(ncols=2, width=5.2, height=3.4)
    for (fmt, gran), sub in lin[lin.symmetric].groupby(["format", "granularity"]):
        med = sub.groupby("clip")[["sqnr_db", "out_rel_err"]].median()
        clips = [c for c in order if c in med.index]
        if len(clips) < 2:
            continue
        a1.plot(clips, med.loc[clips, "sqnr_db"], marker="o", label=f"{fmt} {gran}")
        a2.plot(clips, med.loc[clips, "out_rel_err"], marker="o", label=f"{fmt} {gran}")
    a1.set_ylabel("median SQNR (dB)")
    a2.set_ylabel("median output rel. error")
    a2.set_yscale("log")
    for a in (a1, a2):
        a.set_xlabel("clip")
        if a.lines:
            a.legend(fontsize=7)
    return fig


def perplexity_figure(p: pd.DataFrame) -> Any:
    """Perplexity vs SmoothQuant alpha per scheme; dashed: unsmoothed, black: the model as is."""
    fig, ax = new_figure(width=6.4, height=3.8)
    base = float(p.loc[(p.scheme == "fp") & ~p.smoothing, "perplexity"].iloc[0])
    ax.axhline(base, color="black", lw=1, label=f"as is ({base:.3f})")
    colors = {}
    for scheme, sub in p[p.smoothing & (p.scheme != "fp")].groupby("scheme", sort=False):
        sub = sub.sort_values("alpha")
        (line,) = ax.plot(sub.alpha, sub.perplexity, marker="o", label=f"{scheme} + SmoothQuant")
        colors[scheme] = line.get_color()
    for r in p[~p.smoothing & (p.scheme != "fp")].itertuples():
        ax.axhline(
            r.perplexity,
            ls="--",
            lw=1,
            color=colors.get(r.scheme, "grey"),
            label=f"{r.scheme} ({r.perplexity:.3f})",
        )
    ax.set_xlabel("SmoothQuant alpha")
    ax.set_ylabel("perplexity (held out)")
    vals = p.perplexity.replace([np.inf], np.nan).dropna()
    vals = vals[vals <= 2 * base]  # far-off schemes stay in the legend
    if len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        pad = max(0.1 * (hi - lo), 0.002 * lo)
        ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=7, ncol=2)
    return fig


def build_report(res: Any, cfg: Any) -> Report:
    """The HTML report of a quant run."""
    rep = Report(f"Quantization stress test: {res.model}", subtitle="actscope quant")
    cal, ev = res.data["calibration"], res.data["evaluation"]
    rep.kv(
        "Run",
        {
            "model": res.model,
            "corpus": cal["corpus"],
            "calibration tokens (part 0)": cal["tokens_used"],
            "held-out tokens (part 1)": ev["tokens_used"],
            "output-error tokens": int(res.sensitivity.out_tokens.iloc[0])
            if len(res.sensitivity)
            else 0,
            "quantizers": len(cfg.specs()),
            "sites": res.site_stats.site.nunique() if len(res.site_stats) else 0,
            "percentiles exact (bf16 activations)": res.data["exact_percentiles"],
            **{f"{k} (s)": v["seconds"] for k, v in res.timings.items()},
        },
    )
    sens = res.sensitivity
    if len(sens):
        rep.figure(
            layer_figure(sens), "SQNR of every site by layer", heading="Per-site sensitivity"
        )
        agg = (
            sens[sens.site == sens.group]
            .groupby(["quantizer", "kind"])
            .agg(
                sqnr_db=("sqnr_db", "median"),
                rel_mse=("rel_mse", "median"),
                clip_rate=("clip_rate", "median"),
                out_rel_err=("out_rel_err", "median"),
            )
            .reset_index()
        )
        rep.table(agg, "Median over layers, per quantizer and site kind", max_rows=400)
        if {"p99", "mse"} & set(sens["clip"]):
            rep.figure(
                clipping_figure(sens),
                "Clipping rule vs error (Linear inputs, median)",
                heading="Clipping",
            )
        worst = sens[(sens.quantizer == DEFAULT_QUANTIZER) & (sens.site == sens.group)]
        rep.table(
            worst.nsmallest(20, "sqnr_db")[
                ["site", "sqnr_db", "rel_mse", "clip_rate", "out_rel_err"]
            ],
            f"Worst sites under {DEFAULT_QUANTIZER}",
            heading="Worst sites",
        )
    if len(res.correlations):
        df = covariation_frame(sens, res.site_stats)
        rep.figure(
            scatter_figure(df),
            f"Site statistics vs {DEFAULT_QUANTIZER} SQNR (one point per tensor)",
            heading="Do maxima co-vary with quantization error?",
        )
        rep.table(res.correlations, "Spearman rank correlations with SQNR", max_rows=200)
    if res.perplexity is not None:
        rep.figure(perplexity_figure(res.perplexity), "Held-out perplexity", heading="Perplexity")
        rep.table(
            res.perplexity[
                ["scheme", "smoothing", "alpha", "perplexity", "delta_ppl", "recovered", "tokens"]
            ],
            "Perplexity per scheme, with and without SmoothQuant (recovered = share of the "
            "scheme's perplexity increase removed)",
            max_rows=200,
        )
    return rep
