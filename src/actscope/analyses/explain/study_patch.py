"""``actscope patch`` as an API: exact patching and attribution patching of prompt pairs,
their agreement, the tables and the HTML report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from actscope.analyses.explain import figures
from actscope.analyses.explain.attribution import agreement, attribute_pairs
from actscope.analyses.explain.pairs import TokenizedPair
from actscope.analyses.explain.patching import UNIT_KEY, aggregate, check_direction, patch_pairs
from actscope.analyses.explain.units import (
    HEAD_KIND,
    PatchUnit,
    head_units,
    patchable_sites,
    position_units,
)
from actscope.capture import sitemap_of
from actscope.errors import ActscopeError
from actscope.report import Report

METHODS = ("exact", "atp", "both")


@dataclass
class PatchStudy:
    """Results of one patching study; tables are None for a method that did not run."""

    direction: str
    pairs: list[TokenizedPair]
    exact: pd.DataFrame | None = None
    atp: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Token strings of the longest pair (positions are aligned from the end)."""
        return max(self.pairs, key=lambda p: p.length).tokens


def make_units(
    lm: Any, site_patterns: Sequence[str], heads: bool, head_positions: bool = False
) -> Callable[[TokenizedPair], list[PatchUnit]]:
    """``units_for(pair)``: every (site, position) of ``site_patterns`` and, with ``heads``,
    every (layer, head) of ``o_in`` (over all positions, or per position)."""
    sm = sitemap_of(lm)
    sites = patchable_sites(sm, site_patterns) if site_patterns else []
    width = 0
    if heads:
        if f"{HEAD_KIND}.0" not in sm:
            raise ActscopeError("per-head patching needs the o_in site, absent in this family")
        from actscope.sites.shapes import site_shapes

        shape = site_shapes(lm, [f"{HEAD_KIND}.0"])[0]["shape"]
        width = int(shape.split("x")[-1])
    if not sites and not heads:
        raise ActscopeError("nothing to patch: give --sites and/or --heads")

    def units_for(tp: TokenizedPair) -> list[PatchUnit]:
        units = position_units(sites, tp.length)
        if heads:
            units += head_units(sm, width, tp.length if head_positions else None)
        return units

    return units_for


def patch_study(
    lm: Any,
    pairs: Sequence[TokenizedPair],
    units_for: Callable[[TokenizedPair], list[PatchUnit]],
    *,
    method: str = "both",
    direction: str = "denoise",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> PatchStudy:
    """Run exact patching and/or AtP on every pair and build the aggregated tables."""
    if method not in METHODS:
        raise ActscopeError(f"method must be one of {', '.join(METHODS)}, not '{method}'")
    d = check_direction(direction)
    st = PatchStudy(d, list(pairs))
    if method in ("exact", "both"):
        st.exact = patch_pairs(
            lm, pairs, units_for, direction=d, batch_size=batch_size, progress=progress
        )
        st.tables["exact"] = st.exact
        st.tables["exact_agg"] = aggregate(st.exact)
    if method in ("atp", "both"):
        st.atp = attribute_pairs(lm, pairs, units_for, direction=d, progress=progress)
        st.tables["atp"] = st.atp
        st.tables["atp_agg"] = aggregate(st.atp)
    if st.exact is not None and st.atp is not None:
        agg = agreement(st.tables["exact_agg"], st.tables["atp_agg"], d).assign(level="mean")
        per = agreement(st.exact, st.atp, d).assign(level="per pair")
        st.tables["agreement"] = pd.concat([agg, per], ignore_index=True)
    src = st.exact if st.exact is not None else st.atp
    assert src is not None
    base = src.groupby("pair").first()[["ld_clean", "ld_corrupt", "prob_clean", "prob_corrupt"]]
    st.tables["baselines"] = base.reset_index()
    return st


def top_units(agg: pd.DataFrame, direction: str, k: int = 5) -> pd.DataFrame:
    """Per kind, the k units whose patch moves the metric furthest from the base run."""
    base = 0.0 if direction == "denoise" else 1.0
    eff = (agg["ld_norm"] - base).abs()
    ranked = agg.assign(effect=eff).sort_values("effect", ascending=False)
    return ranked.groupby("kind", sort=False).head(k)[
        ["kind", "site", "layer", "pos_from_end", "head", "token", "ld_norm", "effect"]
    ]


def summary(st: PatchStudy) -> dict[str, Any]:
    """Headline numbers: baselines, strongest units per kind, agreement of AtP with exact."""
    b = st.tables["baselines"]
    out: dict[str, Any] = {
        "direction": st.direction,
        "n_pairs": len(st.pairs),
        "mean_ld_clean": float(b["ld_clean"].mean()),
        "mean_ld_corrupt": float(b["ld_corrupt"].mean()),
        "clean_accuracy": float((b["ld_clean"] > 0).mean()),
        "corrupt_flip_rate": float((b["ld_corrupt"] < 0).mean()),
    }
    for name in ("exact", "atp"):
        if f"{name}_agg" in st.tables:
            out[f"top_{name}"] = top_units(st.tables[f"{name}_agg"], st.direction).to_dict(
                "records"
            )
    if "agreement" in st.tables:
        out["agreement"] = st.tables["agreement"].to_dict("records")
    return out


def report(st: PatchStudy, title: str, meta: dict[str, Any]) -> Report:
    """HTML report: baselines, heatmaps per kind and for heads, agreement scatter and table."""
    rep = Report(title, subtitle="activation patching and attribution patching")
    s = summary(st)
    rep.kv("Setup", {**meta, "direction": st.direction, "pairs": len(st.pairs)})
    rep.kv(
        "Baselines (mean over pairs)",
        {
            k: s[k]
            for k in ("mean_ld_clean", "mean_ld_corrupt", "clean_accuracy", "corrupt_flip_rate")
        },
    )
    rep.paragraph(
        "How to read",
        "Each cell is the logit difference logit[answer] - logit[wrong] after patching that "
        "unit, normalised to 0 at the corrupted and 1 at the clean baseline (pair-averaged). "
        + (
            "Denoising: the corrupted prompt runs with the clean value patched in, so cells "
            "near 1 carry what the clean answer needs."
            if st.direction == "denoise"
            else "Noising: the clean prompt runs with the corrupted value patched in, so cells "
            "near 0 are needed for the clean answer."
        )
        + " Positions are counted from the end of the prompt.",
    )
    for name, label in (("exact", "Exact patching"), ("atp", "Attribution patching (AtP)")):
        agg = st.tables.get(f"{name}_agg")
        if agg is None:
            continue
        raw = st.tables[name]  # unit order = execution order of the sites
        for kind in dict.fromkeys(raw.loc[raw["head"] < 0, "kind"]):
            fig = figures.position_heatmap(agg, str(kind), st.labels, f"{label}: {kind}")
            rep.figure(fig, f"{label}, {kind}: layer x position", heading=f"{label}: {kind}")
        if (agg["head"] >= 0).any() and (agg[agg["head"] >= 0]["pos_from_end"] == 0).all():
            rep.figure(
                figures.head_heatmap(agg, f"{label}: attention heads"),
                f"{label}: each head's output (input of o_proj) patched at every position",
                heading=f"{label}: heads",
            )
        rep.table(top_units(agg, st.direction), f"{label}: strongest units per kind")
    if "agreement" in st.tables:
        m = st.tables["exact_agg"].merge(
            st.tables["atp_agg"], on=UNIT_KEY, suffixes=("_exact", "_atp")
        )
        if "changed" in m:
            m = m[m["changed"].astype(bool)]
        rep.figure(
            figures.agreement_scatter(m, "AtP against exact patching"),
            "One point per unit (pair-averaged); the dashed line is perfect agreement",
            heading="Agreement of AtP with exact patching",
        )
        rep.table(
            st.tables["agreement"],
            "Spearman/Pearson correlation of AtP with exact patching, over units whose source "
            "and base values differ; 'mean' = pair-averaged units, 'per pair' = every "
            "(pair, unit). High rank correlation means AtP can be trusted to rank units.",
        )
    return rep


def write_run(
    st: PatchStudy,
    out: Any,
    args: dict[str, Any],
    model: dict[str, Any],
    seconds: float | None = None,
) -> Any:
    """Write the run directory: manifest, summary.json, tables/*.parquet, report.html."""
    from actscope.runs import RunWriter

    with RunWriter(out, "patch", args) as w:
        w.manifest["model"] = model
        if seconds is not None:
            w.manifest["compute_seconds"] = round(seconds, 3)
        for name, df in st.tables.items():
            w.table(name, df)
        w.json("summary.json", summary(st))
        meta = {"model": model.get("name"), "dataset": args.get("pairs")}
        w.text("report.html", report(st, f"Patching: {model.get('name')}", meta).render())
    return out
