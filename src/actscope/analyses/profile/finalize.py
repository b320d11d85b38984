"""From a :class:`ProfileState` to tidy tables, the JSON summary and exports.

Tables (pandas, written as Parquet):

* ``site_stats``: one row per site and statistic (``site, kind, layer, expert, alias_of,
  statistic, value, domain, channel``); aliases (the same tensor under two names) repeat the
  rows of the site they alias.
* ``events``: the top-K |a| events of every distinct site with their coordinates and decoded
  token (``massive`` flags Sun's criterion with the layer-wide median).
* ``layers``: one row per (kind, layer): top-1/2/3 |a|, median |a|, max |a|, quantiles,
  kurtosis, massive counts (both medians) -- the numbers behind the per-layer plots.
* ``massive_channels``: (site, channel, count) of entries meeting Sun's per-token criterion.
* ``domains``: per site and corpus domain: max |a|, mean |a|, kurtosis, massive count.

The global maximum follows the paper's definition: max |a| over the residual stream,
attention and MLP outputs, embedding and final norm (gates, routers, Linear-internal sites
and logits are reported but excluded).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from actscope.analyses.profile.collector import RESIDUAL_KINDS
from actscope.errors import NonFiniteError
from actscope.models.tokens import token_texts
from actscope.runs import library_versions
from actscope.stats.tables import events_table, results_table

GLOBAL_KINDS = RESIDUAL_KINDS


def _site_columns(df: pd.DataFrame, sites: dict[str, Any]) -> pd.DataFrame:
    df.insert(1, "kind", [sites[s].kind for s in df["site"]])
    df.insert(2, "layer", pd.array([sites[s].layer for s in df["site"]], dtype="Int64"))
    df.insert(3, "expert", pd.array([sites[s].expert for s in df["site"]], dtype="Int64"))
    return df


def finalize(state: Any, tokenizer: Any, domains: list[str] | None = None) -> Any:
    """Tables, summary and exports of a collected (possibly merged) profile state."""
    from actscope.analyses.profile.api import ProfileResult

    col = state.collector
    sites = {s.name: s for s in col.sites}
    results = {name: st.result() for name, st in col.stats.items()}
    domains = domains or list(state.corpus.get("domains", []))

    stats = results_table(results)
    parts = [stats.assign(alias_of=stats["site"])]
    for name, first in col.aliases.items():
        if name != first and first in results and name in sites:
            parts.append(stats[stats["site"] == first].assign(site=name, alias_of=first))
    site_stats = _site_columns(pd.concat(parts, ignore_index=True), sites)
    site_stats["domain_name"] = [
        (domains[int(d)] if d is not pd.NA and 0 <= int(d) < len(domains) else None)
        for d in site_stats["domain"]
    ]

    events = _site_columns(events_table(results), sites)
    events["abs_value"] = events["value"].abs()
    events["token"] = token_texts(tokenizer, events["token_id"].to_numpy())
    events["domain"] = [domains[d] if 0 <= d < len(domains) else "?" for d in events["domain_id"]]
    events["seq_position"] = events["position"] % max(1, int(state.config["seq_len"]))
    medians = {n: r.get("median_abs", math.nan) for n, r in results.items()}
    cfg = state.config
    events["massive"] = [
        bool(
            abs(v) > cfg["massive_abs"]
            and abs(v) >= cfg["massive_ratio"] * medians.get(s, math.inf)
        )
        for s, v in zip(events["site"], events["value"], strict=True)
    ]

    layers = _layers_table(results, sites, col.aliases)
    massive_channels = _massive_channels(results, sites)
    domains_tbl = site_stats[
        site_stats["domain"].notna() & site_stats["statistic"].str.startswith("domain_")
    ]
    domains_tbl = domains_tbl.pivot_table(
        index=["site", "kind", "layer", "domain_name"], columns="statistic", values="value"
    ).reset_index()
    domains_tbl.columns = [
        c if c == "domain_name" else str(c).removeprefix("domain_") for c in domains_tbl.columns
    ]

    summary = _summary(state, results, sites, events, layers)
    exports = _exports(results, sites, col.aliases)
    manifest = {
        "command": "profile",
        "model": state.model,
        "corpus": state.corpus,
        "tokenization": state.policy,
        "config": state.config,
        "tokens": state.tokens,
        "padded_tokens": state.padded_tokens,
        "batches": state.batches,
        "shards": state.shards,
        "collect_seconds": round(state.seconds, 3),
        "tokens_per_s": round(state.tokens / state.seconds, 1) if state.seconds else None,
        "distinct_sites": len(col.stats),
        "sites": len(sites),
        "versions": library_versions(),
    }
    tables = {
        "site_stats": site_stats,
        "events": events,
        "layers": layers,
        "massive_channels": massive_channels,
        "domains": domains_tbl,
    }
    return ProfileResult(tables=tables, summary=summary, manifest=manifest, exports=exports)


def _layers_table(
    results: dict[str, dict[str, Any]], sites: dict[str, Any], aliases: dict[str, str]
) -> pd.DataFrame:
    rows = []
    for name, site in sites.items():
        r = results.get(aliases.get(name, name))
        if r is None or site.expert is not None:
            continue
        q = r.get("quantiles", {})
        rows.append(
            {
                "site": name,
                "kind": site.kind,
                "layer": -1 if site.layer is None else site.layer,
                "top1": r.get("top1", math.nan),
                "top2": r.get("top2", math.nan),
                "top3": r.get("top3", math.nan),
                "median_abs": r.get("median_abs", math.nan),
                "max_abs": r.get("max_abs", math.nan),
                "mean": r.get("mean", math.nan),
                "std": r.get("std", math.nan),
                "min": r.get("min", math.nan),
                "max": r.get("max", math.nan),
                **{f"abs_{k}": v for k, v in q.items()},
                "kurtosis_token_mean": r.get("kurtosis_token_mean", math.nan),
                "kurtosis_token_max": r.get("kurtosis_token_max", math.nan),
                "channel_kurtosis_max": r.get("channel_kurtosis_max", math.nan),
                "massive_token_count": r.get("massive_token_count", 0),
                "massive_layer_count": r.get("massive_layer_count", 0),
                "near_zero_fraction": r.get("near_zero_frac", math.nan),
                "zero_fraction": r.get("zero_frac", math.nan),
                "nonfinite": r.get("nonfinite", 0),
                "count": r.get("count", 0),
            }
        )
    return pd.DataFrame(rows)


def _massive_channels(results: dict[str, dict[str, Any]], sites: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {"site": n, "kind": sites[n].kind, "layer": sites[n].layer, "channel": c, "count": k}
        for n, r in results.items()
        for c, k in r.get("massive_channels", {}).items()
    ]
    return pd.DataFrame(rows, columns=["site", "kind", "layer", "channel", "count"])


def _summary(
    state: Any,
    results: dict[str, dict[str, Any]],
    sites: dict[str, Any],
    events: pd.DataFrame,
    layers: pd.DataFrame,
) -> dict[str, Any]:
    glob = events[events["kind"].isin(GLOBAL_KINDS) & (events["rank"] == 1)]
    best: dict[str, Any] = {}
    if len(glob):
        row = glob.loc[glob["abs_value"].idxmax()]
        best = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    per_kind = (
        layers.groupby("kind")["max_abs"].max().sort_values(ascending=False).to_dict()
        if len(layers)
        else {}
    )
    resid = layers[layers["kind"] == "resid_post"]
    nonfinite = int(sum(r.get("nonfinite", 0) for r in results.values()))
    if not best and nonfinite:
        raise NonFiniteError(
            f"every activation of {state.model.get('name')} was NaN or Inf ({nonfinite:,} "
            "non-finite values, no finite one): the weights are corrupt or overflow in this dtype"
        )
    massive_tok = resid["massive_token_count"].sum() if len(resid) else 0
    massive_lay = resid["massive_layer_count"].sum() if len(resid) else 0
    return {
        "model": state.model.get("name"),
        "tokens": state.tokens,
        "global_max": best,
        "max_abs_by_kind": per_kind,
        "sun_criterion": {
            "fires_per_token_median": bool(massive_tok > 0),
            "fires_layer_median": bool(massive_lay > 0),
            "resid_post_massive_entries_per_token_median": int(massive_tok),
            "resid_post_massive_entries_layer_median": int(massive_lay),
            "layers_with_massive_per_token_median": [
                int(x) for x in resid.loc[resid["massive_token_count"] > 0, "layer"]
            ],
            "layers_with_massive_layer_median": [
                int(x) for x in resid.loc[resid["massive_layer_count"] > 0, "layer"]
            ],
        },
        "kurtosis": {
            "resid_post_token_mean_over_layers": float(resid["kurtosis_token_mean"].mean())
            if len(resid)
            else math.nan,
            "resid_post_token_max_layer": float(resid["kurtosis_token_mean"].max())
            if len(resid)
            else math.nan,
        },
        "nonfinite_values": nonfinite,
    }


def _exports(
    results: dict[str, dict[str, Any]], sites: dict[str, Any], aliases: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """SmoothQuant act scales (max |x|) and AWQ mean |x| per Linear input channel."""
    import torch

    scales: dict[str, Any] = {}
    mean_abs: dict[str, Any] = {}
    sum_sq: dict[str, Any] = {}
    for name, site in sites.items():
        linear_in = site.kind.endswith("_in") and site.kind not in (
            "attn_in",
            "mlp_in",
            "expert_in",
        )
        r = results.get(aliases.get(name, name), {})
        if not linear_in or "channel_max_abs" not in r:
            continue
        scales[site.module] = torch.from_numpy(np.asarray(r["channel_max_abs"], dtype=np.float32))
        mean_abs[site.module] = torch.from_numpy(
            np.asarray(r["channel_mean_abs"], dtype=np.float32)
        )
        sum_sq[site.module] = {
            "sum_sq": torch.from_numpy(np.asarray(r["channel_sum_sq"], dtype=np.float64)),
            "count": int(np.asarray(r["channel_count"]).max()),
        }
    return {"smoothquant_act_scales": scales, "awq_mean_abs": mean_abs, "imatrix_sums": sum_sq}
