"""The profile's HTML report: the plots of the Massive-Activations and Max-Activation papers."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from actscope.models.tokens import visible
from actscope.report import Report, new_figure

PLOT_KINDS = ["resid_post", "attn_out", "mlp_out", "mlp_act", "attn_in", "mlp_in", "mlp_gate"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if math.isfinite(v) else str(v)
    return str(v)


def build_report(result: Any) -> str:
    """Render the report of a :class:`ProfileResult` as a self-contained HTML string."""
    s, m, t = result.summary, result.manifest, result.tables
    name = m["model"].get("name", "model")
    rep = Report(
        f"Activation profile: {name}",
        f"{m['tokens']:,} tokens of corpus '{m['corpus'].get('spec', '?')}' at "
        f"{_fmt(m.get('tokens_per_s'))} tokens/s; {m['sites']} sites "
        f"({m['distinct_sites']} distinct tensors); dtype {m['model'].get('dtype')} on "
        f"{m['model'].get('device')}",
    )
    g = s.get("global_max", {})
    sun = s["sun_criterion"]
    headline = (
        f"<p><b>Global max |a| = {_fmt(g.get('abs_value', float('nan')))}</b> at "
        f"<code>{html.escape(str(g.get('site')))}</code> (token "
        f"<code>{html.escape(repr(g.get('token')))}</code>, position {g.get('seq_position')}, "
        f"channel {g.get('channel')}, domain {html.escape(str(g.get('domain')))}). "
        f"Sun's massive-activation criterion (|a| &gt; {m['config']['massive_abs']:g} and "
        f"&ge; {m['config']['massive_ratio']:g} x median): "
        f"<b>{'fires' if sun['fires_per_token_median'] else 'does not fire'}</b> with the "
        f"per-token median ({sun['resid_post_massive_entries_per_token_median']} entries on "
        f"resid_post), <b>{'fires' if sun['fires_layer_median'] else 'does not fire'}</b> with "
        f"the layer-wide median. Mean per-token excess kurtosis of resid_post (OSP): "
        f"<b>{_fmt(s['kurtosis']['resid_post_token_mean_over_layers'])}</b>.</p>"
    )
    if s.get("nonfinite_values"):
        headline += (
            f"<p><b>{s['nonfinite_values']} NaN/Inf values</b> were counted and excluded.</p>"
        )
    rep.text("Summary", headline)
    layers = t["layers"]
    _per_layer_topk(rep, layers)
    _max_by_component(rep, layers)
    _massive_table(rep, t["events"])
    if result.view is not None:
        _view(rep, result.view)
    _quantiles_kurtosis(rep, layers)
    _domains(rep, t["domains"])
    mc = t["massive_channels"]
    if len(mc):
        top = mc.groupby(["kind", "channel"])["count"].agg(["sum", "count"]).reset_index()
        top = top.rename(columns={"sum": "massive entries", "count": "sites"})
        rep.table(
            top.sort_values("massive entries", ascending=False),
            "Channels holding massive entries (per-token criterion), summed over layers",
            heading="Recurring massive channels",
            max_rows=20,
        )
    rep.kv(
        "Run",
        {
            "model file": m["model"].get("source"),
            "file sha256": m["model"].get("file_hash"),
            "corpus hash": m["corpus"].get("hash"),
            "BOS policy": m["tokenization"].get("bos_policy"),
            "tokenizer adds BOS": m["tokenization"].get("tokenizer_adds_bos"),
            "seq_len x batch": f"{m['config']['seq_len']} x {m['config']['batch_size']}",
            "quantile error": "exact for bf16 activations, <= 0.39% relative otherwise",
            "versions": ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "platform"),
        },
    )
    return rep.render()


def _per_layer_topk(rep: Report, layers: pd.DataFrame) -> None:
    kinds = [k for k in PLOT_KINDS if k in set(layers["kind"])]
    if not kinds:
        return
    ncols = min(3, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = new_figure(ncols, nrows, width=4.6, height=3.2)
    axes = np.atleast_1d(axes).ravel()
    for ax, kind in zip(axes, kinds, strict=False):
        d = layers[layers["kind"] == kind].sort_values("layer")
        for col, style in (("top1", "-o"), ("top2", "-s"), ("top3", "-^"), ("median_abs", "--")):
            ax.plot(d["layer"], d[col], style, ms=3, label=col.replace("_abs", ""))
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("layer")
    for ax in axes[len(kinds) :]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    rep.figure(
        fig,
        "Per layer: the three largest |a| and the median |a| (log scale), by site kind",
        heading="Top-1/2/3 and median per layer",
    )


def _max_by_component(rep: Report, layers: pd.DataFrame) -> None:
    fig, ax = new_figure(width=8, height=4)
    for kind in [
        "resid_post",
        "attn_out",
        "mlp_out",
        "attn_in",
        "mlp_in",
        "mlp_act",
        "q_out",
        "k_out",
        "v_out",
        "mlp_gate",
        "router_logits",
    ]:
        d = layers[layers["kind"] == kind].sort_values("layer")
        if len(d):
            ax.plot(d["layer"], d["max_abs"], "-o", ms=3, label=kind)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("max |a|")
    ax.legend(fontsize=8, ncol=3)
    rep.figure(fig, "Max |a| of each component across depth", heading="Max |a| per component")


def massive_occurrences(events: pd.DataFrame) -> pd.DataFrame:
    """Massive top-K events grouped by where they occur (sample, position, channel): the
    token, the largest |a| and its site, the layers and the number of sites holding it."""
    ev = events[events["massive"]].sort_values(["abs_value", "rank"], ascending=[False, True])
    if not len(ev):
        return ev
    g = ev.groupby(["sample_id", "position", "channel"], sort=False)
    occ = g.agg(
        token=("token", "first"),
        seq_position=("seq_position", "first"),
        max_abs=("abs_value", "first"),
        at=("site", "first"),
        first_layer=("layer", "min"),
        last_layer=("layer", "max"),
        sites=("site", "nunique"),
        domain=("domain", "first"),
    ).reset_index()
    return occ.sort_values(["max_abs", "sites"], ascending=False, kind="stable")


def _layers_span(first: Any, last: Any) -> str:
    if pd.isna(first):
        return "-"
    return f"{int(first)}" if first == last else f"{int(first)}-{int(last)}"


def _massive_table(rep: Report, events: pd.DataFrame) -> None:
    occ = massive_occurrences(events)
    if len(occ):
        shown = pd.DataFrame(
            {
                "token": [visible(t, 16) for t in occ["token"]],
                "position": occ["seq_position"],
                "channel": occ["channel"],
                "max |a|": occ["max_abs"],
                "at": occ["at"],
                "layers": [
                    _layers_span(a, b)
                    for a, b in zip(occ["first_layer"], occ["last_layer"], strict=True)
                ],
                "sites": occ["sites"],
                "domain": occ["domain"],
                "sample": occ["sample_id"],
                "doc position": occ["position"],
            }
        )
        n = int(events["massive"].sum())
        rep.table(
            shown,
            f"{n} top-K events meet Sun's criterion (layer-wide median); one row per token "
            f"occurrence and channel ({len(occ)}), with the layers and the number of sites "
            "where it is among the site's top-K events",
            heading="Massive activations",
            max_rows=40,
        )
    else:
        top = events[events["kind"].isin(["resid_post", "attn_out", "mlp_out"])]
        top = top.sort_values("abs_value", ascending=False).head(25)
        cols = ["site", "value", "token", "seq_position", "channel", "domain", "sample_id"]
        rep.table(
            top.assign(token=[visible(t, 16) for t in top["token"]])[cols],
            "No event meets Sun's criterion; the largest residual/output events",
            heading="Massive activations",
            max_rows=25,
        )


def _view(rep: Report, view: dict[str, Any]) -> None:
    mag = np.asarray(view["abs"])
    fig, ax = new_figure(width=11, height=max(3.0, 0.18 * mag.shape[0] + 1))
    im = ax.imshow(np.log10(mag + 1e-6), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(view["tokens"])))
    ax.set_yticklabels([visible(tk, 14) for tk in view["tokens"]], fontsize=6)
    ax.set_xlabel("channel")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="log10 |a|")
    rep.figure(
        fig,
        f"|a| of {view['site']} for one sequence (sample {view['sample'][0]}, chunk "
        f"{view['sample'][1]}); largest channels {view['top_channels'][:5]}",
        heading="Token x channel view",
    )


def _quantiles_kurtosis(rep: Report, layers: pd.DataFrame) -> None:
    d = layers[layers["kind"] == "resid_post"].sort_values("layer")
    if not len(d):
        return
    fig, (a1, a2) = new_figure(2, 1, width=5.5, height=3.6)
    for col in [c for c in d.columns if c.startswith("abs_p")] + ["max_abs"]:
        a1.plot(d["layer"], d[col], "-o", ms=3, label=col.removeprefix("abs_"))
    a1.set_yscale("log")
    a1.set_title("quantiles of |a| (resid_post)")
    a1.set_xlabel("layer")
    a1.legend(fontsize=7)
    for kind in ("resid_post", "attn_out", "mlp_out"):
        k = layers[layers["kind"] == kind].sort_values("layer")
        a2.plot(k["layer"], k["kurtosis_token_mean"], "-o", ms=3, label=kind)
    a2.set_yscale("symlog")
    a2.set_title("mean per-token excess kurtosis (OSP)")
    a2.set_xlabel("layer")
    a2.legend(fontsize=7)
    rep.figure(
        fig,
        "Quantiles of |a| from the exact bf16 histogram, and excess kurtosis per layer",
        heading="Quantiles and kurtosis",
    )


def _domains(rep: Report, dom: pd.DataFrame) -> None:
    d = dom[dom["kind"] == "resid_post"]
    if not len(d):
        return
    fig, (a1, a2) = new_figure(2, 1, width=5.5, height=3.6)
    for name, g in d.groupby("domain_name"):
        g = g.sort_values("layer")
        a1.plot(g["layer"], g["max_abs"], "-o", ms=3, label=name)
        if "kurtosis_token_mean" in g:
            a2.plot(g["layer"], g["kurtosis_token_mean"], "-o", ms=3, label=name)
    a1.set_yscale("log")
    a1.set_title("max |a| of resid_post by domain")
    a2.set_yscale("symlog")
    a2.set_title("per-token kurtosis of resid_post by domain")
    for ax in (a1, a2):
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    rep.figure(fig, "Per-domain breakdown of the residual stream", heading="Domains")
    agg = dom.groupby("domain_name").agg(max_abs=("max_abs", "max"), mean_abs=("mean_abs", "mean"))
    rep.table(agg.reset_index(), "Max and mean |a| over all sites, by domain")
