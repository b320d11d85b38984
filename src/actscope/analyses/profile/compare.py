"""``compare``: several profile runs overlaid in one report, depth normalised to [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from actscope.analyses.profile.write import read_run
from actscope.errors import DataError
from actscope.models.tokens import visible
from actscope.report import Report, new_figure
from actscope.runs import RunWriter


def compare_runs(runs: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Load profile runs, build the cross-model table and report; write to ``out`` if given.

    Relative depth of layer l in an L-layer model is l / (L - 1).
    """
    if len(runs) < 1:
        raise DataError("compare needs at least one profile run directory")
    # checked before reading: never into, inside or around one of its own input runs
    writer = (
        None
        if out is None
        else RunWriter(out, "compare", {"runs": [str(r) for r in runs]}, inputs=runs)
    )
    loaded = [read_run(r) for r in runs]
    rows, curves = [], []
    for r in loaded:
        name = r["manifest"]["model"].get("name", Path(r["path"]).name)
        g = r["summary"].get("global_max", {})
        sun = r["summary"]["sun_criterion"]
        rows.append(
            {
                "model": name,
                "family": r["manifest"]["model"].get("family"),
                "tokens": r["manifest"]["tokens"],
                "global_max_abs": g.get("abs_value"),
                "site": g.get("site"),
                "token": g.get("token"),
                "channel": g.get("channel"),
                "sun_fires_token_median": sun["fires_per_token_median"],
                "sun_fires_layer_median": sun["fires_layer_median"],
                "kurtosis_resid_post": r["summary"]["kurtosis"][
                    "resid_post_token_mean_over_layers"
                ],
            }
        )
        lay = r["tables"]["layers"]
        lay = lay[lay["layer"] >= 0].copy()
        n = max(1, int(lay["layer"].max()))
        lay["depth"] = lay["layer"] / n
        lay["model"] = name
        curves.append(lay)
    table = pd.DataFrame(rows)
    curves_df = pd.concat(curves, ignore_index=True)
    rep = Report("Activation profiles compared", f"{len(loaded)} runs")
    rep.table(
        table.assign(token=[visible(str(t or "")) for t in table["token"]]),
        "Global max |a| (residual, attention/MLP outputs, embedding, final norm)",
        heading="Models",
    )
    for kind, col, title in (
        ("resid_post", "max_abs", "max |a| of resid_post"),
        ("resid_post", "median_abs", "median |a| of resid_post"),
        ("resid_post", "kurtosis_token_mean", "per-token kurtosis of resid_post"),
        ("mlp_out", "max_abs", "max |a| of mlp_out"),
    ):
        fig, ax = new_figure(width=7, height=3.6)
        for model, g in curves_df[curves_df["kind"] == kind].groupby("model"):
            g = g.sort_values("depth")
            ax.plot(g["depth"], g[col], "-o", ms=3, label=model)
        ax.set_yscale("symlog" if "kurtosis" in col else "log")
        ax.set_xlabel("relative depth (layer / (L-1))")
        ax.set_title(title)
        if ax.get_lines():
            ax.legend(fontsize=8)
        rep.figure(fig, f"{title} across normalised depth", heading=title)
    result = {"table": table, "curves": curves_df, "html": rep.render()}
    if writer is not None:
        with writer as w:
            w.table("models", table)
            w.table("curves", curves_df)
            w.text("report.html", result["html"])
            w.json("summary.json", {"models": table.to_dict(orient="records")})
        result["out"] = Path(out)
    return result
