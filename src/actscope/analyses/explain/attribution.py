"""Attribution patching (AtP): a first-order estimate of every patch from one backward pass.

For a unit u of a site with base-run value ``a_base`` and source-run value ``a_src``, the
change of the metric when u is patched is estimated by the first-order Taylor term

    delta_hat(u) = sum_{(t, i) in u} (a_src - a_base)[t, i] * dLD/da[t, i]

with the gradient taken in the base run (the corrupted run for ``denoise``). One forward and
one backward pass of the base prompt give the gradients at every site at once; the source
values come from one extra forward pass. The estimated patched logit difference is
``ld_base + delta_hat`` and is normalised like exact patching. The estimate is exact for
units whose effect on LD is linear and degrades where attention saturates or effects cancel
(Kramar et al. 2024), hence :func:`agreement` with exact patching on the same pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor

from actscope.analyses.explain.pairs import TokenizedPair
from actscope.analyses.explain.patching import (
    UNIT_KEY,
    at_least_fp32,
    base_and_source,
    baseline,
    cache_run,
    check_direction,
    last_logits,
    normalise,
    unit_rows,
)
from actscope.analyses.explain.units import PatchUnit
from actscope.capture import ForwardState, Handles, attach, sitemap_of


def values_and_grads(
    lm: Any, ids: Sequence[int], sites: Sequence[str], answer: int, wrong: int
) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """Forward + backward of one prompt: each site's value and dLD/dvalue, (length, width).

    The embedding output is made a leaf that requires grad, so every later activation carries
    a graph even though the weights are frozen. Sites are hooked as identity edits so that a
    slice of a fused projection is itself on the path to the logits.
    """
    model = getattr(lm, "model", lm)
    sm = sitemap_of(lm)
    dev = model.get_input_embeddings().weight.device
    x = torch.tensor([list(ids)], device=dev)
    held: dict[str, Tensor] = {}
    handles = Handles()
    state = ForwardState()

    def make_leaf(v: Tensor, _m: Tensor | None) -> Tensor:
        return v.detach().requires_grad_(True)

    def keeper(name: str) -> Callable[[Tensor, Tensor | None], Tensor]:
        def keep(v: Tensor, _m: Tensor | None) -> Tensor:
            held[name] = v
            return v

        return keep

    try:
        handles.items += attach(sm, sm.get("embed"), make_leaf, state, edit=True).items
        for s in sites:
            handles.items += attach(sm, sm.get(s), keeper(s), state, edit=True).items
        with torch.inference_mode(False), torch.enable_grad():
            logits = last_logits(model, x)
            ld = logits[0, answer] - logits[0, wrong]
            grads = torch.autograd.grad(ld, [held[s] for s in sites], allow_unused=True)
    finally:
        handles.remove()
    out_v = {s: held[s][0].detach() for s in sites}
    out_g = {
        s: (torch.zeros_like(out_v[s]) if g is None else g[0].detach())
        for s, g in zip(sites, grads, strict=True)
    }
    return out_v, out_g, float(ld.detach())


def attribute_pairs(
    lm: Any,
    pairs: Sequence[TokenizedPair],
    units_for: Callable[[TokenizedPair], list[PatchUnit]],
    *,
    direction: str = "denoise",
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """AtP estimate of every unit of every pair; same columns as exact patching, with
    ``delta`` (the first-order change of LD), ``ld`` = ld_base + delta, ``ld_norm`` and
    ``changed`` (False where the source and base values of the unit are identical, e.g.
    positions before the first corrupted token: patching them is a no-op)."""
    d = check_direction(direction)
    frames = []
    for i, tp in enumerate(pairs):
        units = units_for(tp)
        sites = list(dict.fromkeys(u.site for u in units))
        base_ids, src_ids = base_and_source(tp, d)
        source, _ = cache_run(lm, src_ids, sites)
        values, grads, ld_base = values_and_grads(lm, base_ids, sites, tp.answer_id, tp.wrong_id)
        diffs = {s: at_least_fp32(source[s]) - at_least_fp32(values[s]) for s in sites}
        prods = {s: diffs[s] * at_least_fp32(grads[s]) for s in sites}
        delta = [float(u.reduce(prods[u.site])) for u in units]
        cols = unit_rows(i, tp, units, baseline(lm, tp))
        cols["delta"] = delta
        cols["changed"] = [bool(u.reduce(diffs[u.site].abs()) > 0) for u in units]
        cols["ld"] = [ld_base + x for x in delta]
        frames.append(pd.DataFrame(cols))
        if progress is not None:
            progress(len(units))
    df = pd.concat(frames, ignore_index=True)
    df["ld_norm"] = normalise(df["ld"], df["ld_clean"], df["ld_corrupt"])
    return df


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(|a|) intersect top-k(|b|)| / k."""
    k = min(k, len(a))
    if k == 0:
        return float("nan")
    ta = set(np.argsort(-np.abs(a))[:k].tolist())
    tb = set(np.argsort(-np.abs(b))[:k].tolist())
    return len(ta & tb) / k


def agreement(
    exact: pd.DataFrame, estimate: pd.DataFrame, direction: str = "denoise", top_k: int = 10
) -> pd.DataFrame:
    """How well AtP ranks units like exact patching, per site kind and over all units.

    Inputs are two tables with column ``ld_norm``: aggregated (one row per unit) or per pair
    (then units are matched within each pair too). Per kind: Spearman rank correlation,
    Pearson correlation, the fraction of the exact top-k units by effect size that AtP also
    ranks top-k (effect = |ld_norm - b|, b = 0 for denoising and 1 for noising, the value of
    the unpatched base run), and the number of units compared. Units marked unchanged in
    ``estimate`` (identical source and base values) are left out: both methods give exactly
    the base value there, and counting them would inflate the agreement.
    """
    base = 0.0 if check_direction(direction) == "denoise" else 1.0
    key = UNIT_KEY + (["pair"] if "pair" in exact and "pair" in estimate else [])
    m = exact.merge(estimate, on=key, suffixes=("_exact", "_atp"))
    if "changed" in m:
        m = m[m["changed"].astype(bool)]
    rows = []
    groups = [("all", m), *((str(k), g) for k, g in m.groupby("kind", sort=False))]
    for name, g in groups:
        a, b = g["ld_norm_exact"].to_numpy(float), g["ld_norm_atp"].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        enough = len(a) > 2 and np.std(a) > 0 and np.std(b) > 0
        rows.append(
            {
                "kind": name,
                "n_units": len(a),
                "spearman": float(stats.spearmanr(a, b).statistic) if enough else float("nan"),
                "pearson": float(np.corrcoef(a, b)[0, 1]) if enough else float("nan"),
                f"top{top_k}_overlap": _top_overlap(a - base, b - base, top_k),
            }
        )
    return pd.DataFrame(rows)
