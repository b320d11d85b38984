"""Exact activation patching, many patches per forward pass.

For a pair, the *base* run is the corrupted prompt and the *source* run the clean one
(``direction="denoise"``), or the reverse (``"noise"``). A patched run is the base run with
the entries of one :class:`~actscope.analyses.explain.units.PatchUnit` replaced by the source
run's values at the same site and position. Patched runs are batched: row i of a forward pass
is the base prompt with unit i patched, so ``batch_size`` patches cost one forward pass.

Metrics, at the last position (V = vocabulary):

* ``ld = logit[answer] - logit[wrong]``
* ``prob = softmax(logits)[answer]``
* ``ld_norm = (ld - ld_corrupt) / (ld_clean - ld_corrupt)``: 0 at the corrupted baseline and
  1 at the clean one, whichever the direction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.explain.pairs import TokenizedPair
from actscope.analyses.explain.units import PatchUnit
from actscope.capture import Trace, forward, sitemap_of
from actscope.errors import ActscopeError

Direction = Literal["denoise", "noise"]


@dataclass(frozen=True)
class Baseline:
    """Unpatched metrics of one pair: logit differences and answer probabilities."""

    ld_clean: float
    ld_corrupt: float
    prob_clean: float
    prob_corrupt: float


def check_direction(direction: str) -> Direction:
    if direction not in ("denoise", "noise"):
        raise ActscopeError(f"direction must be 'denoise' or 'noise', not '{direction}'")
    return direction  # type: ignore[return-value]


def base_and_source(tp: TokenizedPair, direction: Direction) -> tuple[list[int], list[int]]:
    """(base ids, source ids): denoise runs the corrupt prompt with clean values patched in."""
    if direction == "denoise":
        return tp.corrupt_ids, tp.clean_ids
    return tp.clean_ids, tp.corrupt_ids


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or kept as is when it is already wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def last_logits(model: Any, ids: Tensor) -> Tensor:
    """fp32 (or wider) logits of the last position, (batch, vocab); only that position is unembedded."""
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    return at_least_fp32(forward(model, ids, **kw).logits[:, -1])


def _keeps_logits(model: Any) -> bool:
    cached = getattr(model, "_actscope_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        object.__setattr__(model, "_actscope_logits_to_keep", cached)
    return bool(cached)


def metrics(logits: Tensor, answer: int, wrong: int) -> tuple[Tensor, Tensor]:
    """(logit difference, answer probability) per row of fp32 ``logits`` (batch, vocab)."""
    ld = logits[:, answer] - logits[:, wrong]
    prob = torch.softmax(logits, dim=-1)[:, answer]
    return ld, prob


def cache_run(
    lm: Any, ids: Sequence[int], sites: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """One unpatched forward of one prompt: each site's (length, width) value, last logits (V,)."""
    model = getattr(lm, "model", lm)
    x = torch.tensor([list(ids)], device=model.get_input_embeddings().weight.device)
    with torch.inference_mode(), Trace(lm, list(sites), retain=True) as tr:
        logits = last_logits(model, x)
    acts = {}
    for s in sites:
        v = tr[s]
        if v.dim() != 3:
            raise ActscopeError(
                f"site '{s}' has shape {tuple(v.shape)}; patching needs (batch, seq, width)"
            )
        acts[s] = v[0].clone()
    return acts, logits[0]


def baseline(lm: Any, tp: TokenizedPair) -> Baseline:
    """Unpatched logit differences and answer probabilities of both prompts."""
    _, lc = cache_run(lm, tp.clean_ids, [])
    _, lx = cache_run(lm, tp.corrupt_ids, [])
    ld, prob = metrics(torch.stack([lc, lx]), tp.answer_id, tp.wrong_id)
    return Baseline(float(ld[0]), float(ld[1]), float(prob[0]), float(prob[1]))


def _edit(mask: Tensor, source: Tensor) -> Callable[[Tensor, Tensor | None], Tensor]:
    def edit(value: Tensor, _mask: Tensor | None) -> Tensor:
        return torch.where(mask, source.to(value.dtype), value)

    return edit


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """First position where two equal-length id lists differ (their common prefix length)."""
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return i
    raise ActscopeError("clean and corrupt prompts are identical; nothing to patch")


def prefix_cache(model: Any, ids: Tensor, start: int, batch: int) -> Any:
    """KV cache of ``ids[:start]`` (one unhooked forward, batch 1) repeated ``batch`` times."""
    dev = ids.device
    pre = model(
        input_ids=ids[:start].unsqueeze(0),
        attention_mask=torch.ones(1, start, dtype=torch.long, device=dev),
        position_ids=torch.arange(start, device=dev).unsqueeze(0),
        use_cache=True,
    )
    cache = pre.past_key_values
    cache.batch_repeat_interleave(batch)
    return cache


def suffix_logits(model: Any, ids: Tensor, start: int, batch: int, cache: Any) -> Tensor:
    """Last-position fp32 logits of ``batch`` copies of ``ids`` whose first ``start`` tokens
    are already in ``cache`` (see :func:`prefix_cache`); ``start == 0`` runs everything.

    Positions before ``start`` are identical in the clean and corrupt prompts, so patching
    them is a no-op and a causal model computes exactly the same suffix either way.
    """
    if start == 0:
        return last_logits(model, ids.expand(batch, -1))
    dev, n = ids.device, ids.shape[0]
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(
        input_ids=ids[start:].expand(batch, -1),
        attention_mask=torch.ones(batch, n, dtype=torch.long, device=dev),
        position_ids=torch.arange(start, n, device=dev).expand(batch, -1),
        past_key_values=cache,
        use_cache=True,
        **kw,
    )
    return at_least_fp32(out.logits[:, -1])


def patched_metrics(
    lm: Any,
    base_ids: Sequence[int],
    source: dict[str, Tensor],
    units: Sequence[PatchUnit],
    answer: int,
    wrong: int,
    batch_size: int = 64,
    start: int = 0,
) -> tuple[Tensor, Tensor]:
    """(ld, prob) of the base prompt with each unit patched from ``source``; one row per unit.

    ``start`` is the length of the prefix shared by the two prompts: units at positions
    before it are no-ops and get the unpatched metrics without a forward pass, the others run
    on the suffix only (see :func:`suffix_logits`).
    """
    model = getattr(lm, "model", lm)
    dev = model.get_input_embeddings().weight.device
    ids = torch.tensor(list(base_ids), device=dev)
    todo = [i for i, u in enumerate(units) if u.position is None or u.position >= start]
    ld_all = torch.empty(len(units), dtype=torch.float64)
    prob_all = torch.empty(len(units), dtype=torch.float64)
    if len(todo) < len(units):
        with torch.inference_mode():
            ld0, p0 = metrics(last_logits(model, ids.unsqueeze(0)), answer, wrong)
        ld_all[:] = float(ld0[0])
        prob_all[:] = float(p0[0])
    for k in range(0, len(todo), batch_size):
        rows = todo[k : k + batch_size]
        masks: dict[str, Tensor] = {}
        for r, i in enumerate(rows):
            u = units[i]
            src = source[u.site]
            if u.site not in masks:
                shape = (len(rows), src.shape[0] - start, src.shape[1])
                masks[u.site] = torch.zeros(shape, dtype=torch.bool, device=dev)
            masks[u.site][r] = u.mask(src.shape[0], src.shape[1], dev)[start:]
        edits = {s: _edit(m, source[s][start:]) for s, m in masks.items()}
        with torch.inference_mode():
            cache = prefix_cache(model, ids, start, len(rows)) if start else None
            with Trace(lm, edits=edits):
                logits = suffix_logits(model, ids, start, len(rows), cache)
        ld, prob = metrics(logits, answer, wrong)
        ld_all[rows] = ld.double().cpu()
        prob_all[rows] = prob.double().cpu()
    return ld_all, prob_all


def unit_rows(
    pair: int, tp: TokenizedPair, units: Sequence[PatchUnit], base: Baseline
) -> dict[str, list[Any]]:
    """Descriptive columns shared by the exact and the attribution tables."""
    return {
        "pair": [pair] * len(units),
        "site": [u.site for u in units],
        "kind": [u.kind for u in units],
        "layer": [u.layer for u in units],
        "position": [-1 if u.position is None else u.position for u in units],
        "pos_from_end": [0 if u.position is None else u.position - tp.length for u in units],
        "head": [-1 if u.head is None else u.head for u in units],
        "token": ["*" if u.position is None else tp.tokens[u.position] for u in units],
        "ld_clean": [base.ld_clean] * len(units),
        "ld_corrupt": [base.ld_corrupt] * len(units),
        "prob_clean": [base.prob_clean] * len(units),
        "prob_corrupt": [base.prob_corrupt] * len(units),
    }


def normalise(ld: Any, ld_clean: Any, ld_corrupt: Any) -> np.ndarray:
    """``(ld - ld_corrupt) / (ld_clean - ld_corrupt)``; NaN where the baselines coincide."""
    num = np.asarray(ld - ld_corrupt, dtype=float)
    den = np.asarray(ld_clean - ld_corrupt, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def patch_pairs(
    lm: Any,
    pairs: Sequence[TokenizedPair],
    units_for: Callable[[TokenizedPair], list[PatchUnit]],
    *,
    direction: str = "denoise",
    batch_size: int = 64,
    reuse_prefix: bool = True,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Exact patching of every unit of every pair; one row per (pair, unit).

    Columns: pair, site, kind, layer, position (-1 = all), pos_from_end, head (-1 = none),
    token, ld, prob, ld_norm and the four baselines ld_clean, ld_corrupt, prob_clean,
    prob_corrupt. ``units_for(pair)`` lists the units of a pair (its length sets positions).
    With ``reuse_prefix`` the tokens shared by both prompts run once per batch through a KV
    cache (exact for causal models; off = every patched run recomputes the whole prompt).
    """
    d = check_direction(direction)
    sitemap_of(lm)
    frames = []
    for i, tp in enumerate(pairs):
        units = units_for(tp)
        sites = list(dict.fromkeys(u.site for u in units))
        base_ids, src_ids = base_and_source(tp, d)
        source, _ = cache_run(lm, src_ids, sites)
        base = baseline(lm, tp)
        start = first_difference(tp.clean_ids, tp.corrupt_ids) if reuse_prefix else 0
        ld, prob = patched_metrics(
            lm, base_ids, source, units, tp.answer_id, tp.wrong_id, batch_size, start
        )
        cols = unit_rows(i, tp, units, base)
        cols["ld"] = ld.tolist()
        cols["prob"] = prob.tolist()
        frames.append(pd.DataFrame(cols))
        if progress is not None:
            progress(len(units))
    df = pd.concat(frames, ignore_index=True)
    df["ld_norm"] = normalise(df["ld"], df["ld_clean"], df["ld_corrupt"])
    return df


UNIT_KEY = ["kind", "layer", "pos_from_end", "head"]


def aggregate(df: pd.DataFrame, value: str = "ld") -> pd.DataFrame:
    """Mean over pairs per unit (positions aligned from the end of the prompt).

    ``ld_norm = (mean ld - mean ld_corrupt) / (mean ld_clean - mean ld_corrupt)`` over the
    pairs that have the unit (the pair-averaged normalisation, stable when one pair's clean
    and corrupt baselines are close). ``value`` names the column holding the patched ld.
    """
    spec: dict[str, tuple[str, str]] = {
        "ld": (value, "mean"),
        "ld_clean": ("ld_clean", "mean"),
        "ld_corrupt": ("ld_corrupt", "mean"),
        "n_pairs": ("pair", "nunique"),
        "site": ("site", "first"),
        "token": ("token", "first"),
    }
    if "prob" in df:
        spec["prob"] = ("prob", "mean")
    if "changed" in df:
        spec["changed"] = ("changed", "max")
    out = df.groupby(UNIT_KEY, sort=True, dropna=False).agg(**spec).reset_index()
    out["ld_norm"] = normalise(out["ld"], out["ld_clean"], out["ld_corrupt"])
    return out
