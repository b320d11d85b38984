"""HTML reports of the sparsity commands (tables and curves; figures inlined as PNG)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from actscope.analyses.sparsity.calibrate import CalibrationResult
from actscope.analyses.sparsity.evaluate import SweepResult
from actscope.analyses.sparsity.measure import ALL, MeasureResult, eps_column
from actscope.analyses.sparsity.timing import SpeedResult
from actscope.report import Report, new_figure

HONEST = (
    "Speed-ups are measured only on paths that skip work (sparse kernels that read the active "
    "weight columns). Masked-dense emulation (zeroing inputs, then a dense product) is used for "
    "perplexity and as the numerical reference, never timed as a speed-up."
)


def measure_report(res: MeasureResult, model: dict[str, Any]) -> Report:
    rep = Report(f"Activation sparsity: {model.get('name')}", "actscope sparsity measure")
    z = res.zeros
    rep.kv("Run", {**{k: model.get(k) for k in ("name", "family", "dtype")}, **res.info})
    allz = z[z.domain == ALL]
    if not allz.empty:
        cols = ["frac_zero", *[eps_column(e) for e in res.info.get("eps", [])]]
        fig, axes = new_figure(ncols=len(cols), width=4.6)
        axes = axes if hasattr(axes, "__len__") else [axes]
        for ax, col in zip(axes, cols, strict=False):
            for lin, g in allz.groupby("linear", sort=False):
                ax.plot(g.layer, g[col], marker=".", label=lin)
            ax.set_xlabel("layer")
            ax.set_title(col)
        axes[0].legend(fontsize=7)
        rep.figure(
            fig,
            "Fraction of exact zeros and of entries below epsilon per Linear input (all domains)",
            heading="Natural sparsity",
        )
        pivot = allz.groupby("linear", sort=False)[cols].mean().reset_index()
        rep.table(pivot, "Mean over layers, all domains", float_fmt="{:.4f}")
    c = res.cett
    if not c.empty:
        fig, ax = new_figure()
        for dom, g in c.groupby("domain"):
            ax.plot(
                g.layer, g.activation_ratio, marker=".", label=dom, lw=2.5 if dom == ALL else 1.0
            )
        ax.set_xlabel("layer")
        ax.set_ylabel("activation ratio")
        ax.legend(fontsize=7)
        rep.figure(
            fig,
            f"MLP activation ratio at CETT = {res.info.get('cett_target')} "
            "(threshold per layer by bisection)",
            heading="CETT activation ratio",
        )
        by_dom = c.groupby("domain")[["activation_ratio", "cett"]].mean().reset_index()
        rep.table(by_dom, "Mean over layers, per domain", float_fmt="{:.4f}")
    rep.table(z, "Per domain, layer and Linear input", heading="Tables", max_rows=40)
    return rep


def calibrate_report(res: CalibrationResult, model: dict[str, Any]) -> Report:
    rep = Report(f"Sparsity calibration: {model.get('name')}", "actscope sparsity calibrate")
    rep.kv(
        "Run",
        {
            **{k: model.get(k) for k in ("name", "family", "dtype")},
            **{k: v for k, v in res.calibration.calibration.items() if not isinstance(v, dict)},
        },
    )
    plans = pd.DataFrame(
        [
            {
                "rule": p.rule,
                "allocation": p.allocation,
                "target": p.target,
                "expected_weight_sparsity": p.expected_weight_sparsity,
            }
            for p in res.calibration.plans
        ]
    )
    rep.table(
        plans,
        "Plans in thresholds.json (expected weight sparsity on calibration data)",
        heading="Plans",
        float_fmt="{:.4f}",
    )
    t = res.thresholds
    uni = t[(t.allocation == "uniform") & (t.threshold > 0)]
    if not uni.empty:
        fig = _per_layer_figure(uni, "threshold", "threshold on the score", "uniform, s=", log=True)
        rep.figure(fig, "Calibrated thresholds per layer and unit", heading="Thresholds")
    gr = t[t.allocation == "greedy"]
    if not gr.empty:
        fig = _per_layer_figure(gr, "level", "unit sparsity level", "greedy, target ", log=False)
        rep.figure(
            fig,
            "Greedy per-block allocation: sparsity level of every unit",
            heading="Greedy allocation",
        )
    rep.table(t, "Thresholds of every plan", heading="Tables", max_rows=40)
    return rep


def sweep_pivot(table: pd.DataFrame, value: str = "ppl") -> pd.DataFrame:
    """Rows (rule, allocation), columns targets, cells ``value``."""
    t = table.copy()
    t["config"] = t.rule + "/" + t.allocation
    p = t.pivot_table(index="config", columns="target", values=value, sort=False)
    p.columns = [f"{c:g}" for c in p.columns]
    return p.reset_index()


def wina_vs_teal(table: pd.DataFrame, allocation: str = "uniform") -> str:
    """One sentence: does WINA beat TEAL at equal targets here (by perplexity)?"""
    t = table[(table.allocation == allocation) & (table.target > 0)]
    a = t[t.rule == "teal"].set_index("target").ppl
    b = t[t.rule == "wina"].set_index("target").ppl
    common = [x for x in a.index if x in b.index]
    if not common:
        return "WINA and TEAL were not both evaluated."
    wins = [x for x in common if b[x] < a[x]]
    parts = ", ".join(f"{x:g}: {a[x]:.3f} vs {b[x]:.3f}" for x in common)
    verdict = (
        "WINA beats TEAL at every target"
        if len(wins) == len(common)
        else "WINA does not beat TEAL at any target"
        if not wins
        else f"WINA beats TEAL at {len(wins)} of {len(common)} targets"
    )
    return f"{verdict} ({allocation}; TEAL vs WINA perplexity at target {parts})."


def evaluate_report(res: SweepResult, model: dict[str, Any]) -> Report:
    rep = Report(f"Sparsity vs perplexity: {model.get('name')}", "actscope sparsity evaluate")
    rep.kv("Run", {**{k: model.get(k) for k in ("name", "family", "dtype")}, **res.info})
    t = res.table
    rep.paragraph(
        "Note",
        wina_vs_teal(t) + " Perplexity on held-out text; the prefill "
        f"fraction sparsified is {res.info.get('prefill_fraction')} (recorded per row).",
    )
    rep.table(
        sweep_pivot(t, "ppl"),
        "Held-out perplexity (rows: rule/allocation, columns: target sparsity)",
        heading="Perplexity table",
        float_fmt="{:.3f}",
    )
    rep.table(
        sweep_pivot(t[t.target > 0], "realised_sparsity"),
        "Realised activation sparsity on held-out tokens (target in the column header)",
        float_fmt="{:.3f}",
    )
    rep.table(
        sweep_pivot(t[t.target > 0], "weight_sparsity"),
        "Realised weight sparsity (skipped / all Linear weights of the decoder blocks)",
        float_fmt="{:.3f}",
    )
    fig, (ax1, ax2) = new_figure(ncols=2, width=5.2)
    for (rule, alloc), g in t.groupby(["rule", "allocation"], sort=False):
        g = g.sort_values("target")
        ax1.plot(g.target, g.ppl, marker="o", label=f"{rule}/{alloc}")
        ws = g.weight_sparsity.fillna(0.0)
        ax2.plot(ws, g.ppl, marker="o", label=f"{rule}/{alloc}")
    ax1.set_xlabel("target sparsity")
    ax2.set_xlabel("realised weight sparsity")
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.set_ylabel("perplexity (log scale)")
        ax.legend(fontsize=7)
    rep.figure(
        fig,
        "Perplexity against the target (left) and against the realised weight "
        "sparsity (right), where rules that leave projections dense compare fairly",
        heading="Curves",
    )
    rep.table(t, "Every configuration", heading="Tables", float_fmt="{:.4g}")
    if not res.units.empty:
        u = res.units.assign(error=res.units.realised - res.units.level)
        summ = (
            u.groupby(["rule", "allocation", "target"])
            .error.agg(
                mean_abs=lambda e: e.abs().mean(), max_abs=lambda e: e.abs().max(), mean="mean"
            )
            .reset_index()
        )
        rep.table(
            summ, "Realised minus calibrated unit sparsity on held-out data", float_fmt="{:.4f}"
        )
    return rep


def bench_report(
    gemv: SpeedResult | None, decode: list[SpeedResult], model: dict[str, Any]
) -> Report:
    rep = Report(f"Sparse decode speed: {model.get('name')}", "actscope sparsity bench")
    rep.paragraph("How this was measured", HONEST)
    if gemv is not None and not gemv.table.empty:
        g = gemv.table
        rep.kv("GEMV conditions", gemv.info)
        for dt, gd in g.groupby("dtype", sort=False):
            kinds = list(dict.fromkeys(gd.linear))
            fig, axes = new_figure(ncols=len(kinds), width=3.2, height=3.0)
            axes = axes if hasattr(axes, "__len__") else [axes]
            for ax, kind in zip(axes, kinds, strict=True):
                gk = gd[gd.linear == kind]
                for kern, gkk in gk.groupby("kernel", sort=False):
                    ax.plot(gkk.sparsity, gkk.sparse_cpu_us, marker="o", label=f"sparse {kern}")
                dense_cpu = float(gk.dense_cpu_us.iloc[0])
                ax.plot(gk.sparsity, dense_cpu * (1 - gk.sparsity), "k--", label="ideal dense(1-s)")
                ax.axhline(dense_cpu, color="gray", lw=1, label="dense F.linear")
                ax.set_title(f"{kind} {gk['in'].iloc[0]}x{gk['out'].iloc[0]}", fontsize=9)
                ax.set_xlabel("sparsity")
            axes[0].set_ylabel("thread CPU us per call")
            axes[0].legend(fontsize=6)
            rep.figure(
                fig,
                f"Per-layer GEMV time, {dt} (thread CPU time; wall clock in the table): sparse "
                "kernels, selection included, against dense F.linear and the ideal line",
                heading=f"GEMV {dt}",
            )
        rep.table(g, "Per-layer GEMV timings (medians)", float_fmt="{:.4g}", max_rows=120)
    for d in decode:
        t = d.table
        title = f"Decode {d.info.get('dtype')}, kernel {d.info.get('kernel')}"
        rep.kv(title, d.info)
        fig, axes = new_figure(ncols=2, width=5.0)
        sp = t[t.path == "sparse"].sort_values("target")
        dense = t[t.path == "dense"].iloc[0]
        xs = [0.0, *sp.target.tolist()]
        for ax, ms, amdahl, clock in (
            (axes[0], "ms_per_token", "amdahl_ms", "wall clock"),
            (axes[1], "cpu_ms_per_token", "amdahl_cpu_ms", "thread CPU time"),
        ):
            base = 1e3 / float(dense[ms])
            ax.plot(xs, [base, *(1e3 / sp[ms]).tolist()], marker="o", label="measured")
            ax.plot(xs, [base / (1 - x) for x in xs], "k--", label="ideal dense/(1-s)")
            ax.plot(xs, [base, *(1e3 / sp[amdahl]).tolist()], ":", label="Amdahl bound")
            ax.set_xlabel("target sparsity")
            ax.set_ylabel(f"decode tokens/s (batch 1, {clock})")
            ax.legend(fontsize=7)
        rep.figure(fig, f"{title}: tokens/s against the ideal line", heading=title)
        rep.table(t, "End-to-end decode (median ms per token)", float_fmt="{:.4g}")
        if not d.numerics.empty:
            rep.table(
                d.numerics,
                "Sparse path vs masked-dense hooks, teacher-forced logits",
                float_fmt="{:.4g}",
            )
    return rep


def _per_layer_figure(df: Any, column: str, ylabel: str, title: str, log: bool) -> Any:
    """One panel per rule: ``column`` per layer and unit kind at the rule's largest target."""
    rules = list(dict.fromkeys(df.rule))
    fig, axes = new_figure(ncols=len(rules), width=4.6)
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, rule in zip(axes, rules, strict=True):
        g = df[(df.rule == rule) & (df.target == df.target.max())]
        g = g.assign(kind=g.site.str.split(".").str[0])
        for kind, gk in g.groupby("kind", sort=False):
            (ax.semilogy if log else ax.plot)(gk.layer, gk[column], marker=".", label=kind)
        ax.set_title(f"{rule} ({title}{g.target.max():g})")
        ax.set_xlabel("layer")
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    return fig
