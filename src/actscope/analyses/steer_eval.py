"""Evaluate steering: A/B behaviour scores, side effects, open-ended samples, report.

* **A/B scores** (:mod:`actscope.analyses.steer_ab`): the CAA letter score
  ``p(matching letter) / (p(A) + p(B))`` after ``"("`` and the answer-likelihood score
  ``p(match) / (p(match) + p(other))`` of the two choice texts, as the mean over held-out
  items per (score kind, layer, multiplier) with the standard error.
* **KL**: ``KL(P || Q) = sum_v P(v) (log P(v) - log Q(v))`` in nats, ``P`` the unsteered and
  ``Q`` the steered next-token distribution, averaged over every real token of the neutral
  corpus (steering applied at every position).
* **Perplexity**: ``exp(mean next-token NLL)`` of the steered model on the same tokens (pairs of
  real tokens only, see :mod:`actscope.analyses.perplexity`).
* **Samples**: greedy continuations of open prompts at a few multipliers, kept with the numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from actscope.analyses.perplexity import token_nll
from actscope.analyses.steer_ab import ScoreKind, ab_sweep
from actscope.capture import forward
from actscope.interventions.steering.apply import Steering, Window, parse_positions
from actscope.interventions.steering.datasets import ABItem
from actscope.interventions.steering.generate import generate
from actscope.interventions.steering.vector import SteeringVector

Progress = Callable[[int], None] | None


# side effects ---------------------------------------------------------------------------------
def neutral_batches(
    lm: Any,
    *,
    corpus: str = "default",
    max_tokens: int = 4096,
    seq_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
) -> list[Any]:
    """Padded batches of the evaluation half of a corpus (the default corpus by default)."""
    from actscope.data import default_pad_id, load_corpus, make_batches, tokenize_corpus

    _, held = load_corpus(corpus).split(0.5, seed=seed)
    toks = tokenize_corpus(held, lm.tokenizer, seq_len=seq_len, max_tokens=max_tokens, seed=seed)
    return list(
        make_batches(
            toks, batch_size=batch_size, padding_side="right", pad_id=default_pad_id(lm.tokenizer)
        )
    )


def side_effects(
    lm: Any,
    vector: SteeringVector,
    configs: Sequence[tuple[int, float]],
    batches: Sequence[Any],
    *,
    positions: str | Window = "all",
    progress: Progress = None,
) -> pd.DataFrame:
    """KL to the unsteered distribution and perplexity for each (layer, multiplier)."""
    model = lm.model
    device = model.get_input_embeddings().weight.device
    acc = {c: [0.0, 0.0, 0] for c in configs}  # kl sum, nll sum, nll count
    tokens = 0
    base_nll, base_n = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            b = batch.to(device)
            real = b.attention_mask.bool()
            base = torch.log_softmax(
                forward(model, b.input_ids, b.attention_mask).logits.float(), -1
            )
            nll, valid = token_nll(base, b.input_ids, b.attention_mask)
            base_nll += float((nll * valid).sum())
            base_n += int(valid.sum())
            p = base.exp()
            tokens += int(real.sum())
            for layer, m in configs:
                with Steering(lm, vector, layers=[layer], coef=float(m), positions=positions):
                    out = forward(model, b.input_ids, b.attention_mask).logits.float()
                logq = torch.log_softmax(out, -1)
                kl = (p * (base - logq)).sum(-1)
                nll, valid = token_nll(logq, b.input_ids, b.attention_mask)
                a = acc[(layer, m)]
                a[0] += float((kl * real).sum())
                a[1] += float((nll * valid).sum())
                a[2] += int(valid.sum())
                if progress is not None:
                    progress(1)
    rows = []
    for (layer, m), (kl, nll_sum, n) in acc.items():
        rows.append(
            {
                "layer": layer,
                "multiplier": float(m),
                "kl": kl / max(tokens, 1),
                "ppl": math.exp(nll_sum / n) if n else float("nan"),
                "base_ppl": math.exp(base_nll / base_n) if base_n else float("nan"),
                "tokens": tokens,
            }
        )
    return pd.DataFrame(rows)


# choice ---------------------------------------------------------------------------------------
def is_monotonic(values: Sequence[float], tol: float = 0.0) -> bool:
    """Non-decreasing within ``tol`` (each step may fall by at most ``tol``)."""
    return all(b >= a - tol for a, b in itertools.pairwise(values))


def choose_layer(ab: pd.DataFrame) -> tuple[str, int]:
    """(score kind, layer) whose dose-response is best: monotonic curves first, then the
    largest ``score(max multiplier) - score(min multiplier)``."""
    best: tuple[tuple[bool, float], tuple[str, int]] | None = None
    for (kind, layer), g in ab.groupby(["kind", "layer"], sort=True):
        curve = g.sort_values("multiplier").score.to_list()
        key = (is_monotonic(curve), curve[-1] - curve[0])
        if best is None or key > best[0]:
            best = (key, (str(kind), int(layer)))
    assert best is not None, "empty sweep"
    return best[1]


# full evaluation ------------------------------------------------------------------------------
@dataclass
class SteerEval:
    """Everything ``steer eval`` measured."""

    ab: pd.DataFrame
    side: pd.DataFrame
    samples: list[dict[str, Any]]
    layer: int
    kind: str
    positions: str
    summary: dict[str, Any] = field(default_factory=dict)


def evaluate(
    lm: Any,
    vector: SteeringVector,
    items: Sequence[ABItem],
    *,
    layers: Sequence[int] | None = None,
    multipliers: Sequence[float] = (-2, -1, 0, 1, 2),
    kinds: Sequence[ScoreKind] = ("letter", "answer"),
    positions: str | Window = "all",
    neutral: Sequence[Any] = (),
    side_layers: str = "best",
    prompts: Sequence[str] = (),
    sample_multipliers: Sequence[float] | None = None,
    max_new_tokens: int = 40,
    chat: bool = True,
    batch_size: int = 16,
    progress: Progress = None,
) -> SteerEval:
    """A/B sweep over ``kinds x layers x multipliers`` with ``positions``; the chosen layer is
    the one (over all kinds) of :func:`choose_layer`; side effects on ``neutral`` batches with
    every position steered, for the chosen layer (``side_layers="best"``) or every layer
    (``"all"``); greedy samples of ``prompts`` with ``positions`` at the chosen layer for
    ``sample_multipliers`` (default: min, 0, max)."""
    lay = list(layers) if layers is not None else vector.layers
    mults = sorted({float(m) for m in multipliers} | {0.0})
    win = parse_positions(positions)
    ab = ab_sweep(
        lm,
        vector,
        items,
        lay,
        mults,
        kinds=kinds,
        positions=win,
        chat=chat,
        batch_size=batch_size,
        progress=progress,
    )
    kind, best = choose_layer(ab)
    side_lay = lay if side_layers == "all" else [best]
    side = pd.DataFrame()
    if neutral:
        side = side_effects(
            lm, vector, [(x, m) for x in side_lay for m in mults], neutral, progress=progress
        )
    smults = (
        list(sample_multipliers)
        if sample_multipliers is not None
        else sorted({mults[0], 0.0, mults[-1]})
    )
    samples = []
    for m in smults:
        st = None if m == 0 else Steering(lm, vector, layers=[best], coef=float(m), positions=win)
        outs = generate(
            lm, list(prompts), st, chat=chat, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        samples += [
            {"layer": best, "multiplier": m, "prompt": p, "text": t}
            for p, t in zip(prompts, outs, strict=True)
        ]
    summary: dict[str, Any] = {
        "layer": best,
        "chosen_by": kind,
        "positions": str(win),
        "multipliers": mults,
        "n_items": len(items),
    }
    for k in dict.fromkeys(ab.kind):
        curve = ab[(ab.kind == k) & (ab.layer == best)].sort_values("multiplier")
        summary[f"{k}_scores"] = dict(zip(curve.multiplier, curve.score, strict=True))
        summary[f"{k}_monotonic"] = is_monotonic(list(curve.score))
    if not side.empty:
        at = side[side.layer == best].sort_values("multiplier")
        summary["kl"] = dict(zip(at.multiplier, at.kl, strict=True))
        summary["ppl"] = dict(zip(at.multiplier, at.ppl, strict=True))
        summary["base_ppl"] = float(at.base_ppl.iloc[0])
    return SteerEval(ab, side, samples, best, kind, str(win), summary)


# report ---------------------------------------------------------------------------------------
def report(ev: SteerEval, title: str, meta: dict[str, Any] | None = None) -> Any:
    """HTML report: summary, layer x multiplier heatmap, dose-response curve, tables, samples."""
    import html as _html

    from actscope.report import Report

    rep = Report(
        title,
        subtitle="CAA A/B behaviour score p(match)/(p(A)+p(B)); KL and "
        "perplexity on the neutral corpus",
    )
    rep.kv(
        "Summary",
        {
            **(meta or {}),
            "chosen layer": ev.layer,
            "chosen by": ev.kind,
            "positions": ev.positions,
            **{k: v for k, v in ev.summary.items() if k.endswith("_monotonic")},
        },
    )
    for kind in dict.fromkeys(ev.ab.kind):
        rep.figure(
            *_heatmap(ev.ab[ev.ab.kind == kind], kind), heading=f"Layer x multiplier ({kind})"
        )
    rep.figure(*_dose_response(ev), heading="Dose-response")
    rep.table(ev.ab, "A/B score per layer and multiplier", heading="A/B sweep", max_rows=400)
    if not ev.side.empty:
        rep.table(ev.side, "Side effects on the neutral corpus", heading="Side effects")
    if ev.samples:
        body = "".join(
            f"<tr><td>{s['multiplier']:g}</td><td>{_html.escape(s['prompt'])}</td>"
            f"<td>{_html.escape(s['text'])}</td></tr>"
            for s in ev.samples
        )
        rep.text(
            "Samples",
            f"<table><tr><th>multiplier</th><th>prompt</th><th>generation</th></tr>{body}</table>",
        )
    return rep


def _heatmap(ab: pd.DataFrame, kind: str) -> tuple[Any, str]:
    from actscope.report import new_figure

    grid = ab.pivot(index="layer", columns="multiplier", values="score")
    fig, ax = new_figure(width=7, height=max(3.0, 0.28 * len(grid) + 1.5))
    ax.grid(False)
    im = ax.imshow(grid.values, aspect="auto", cmap="RdBu_r", vmin=0, vmax=1, origin="lower")
    ax.set_xticks(range(len(grid.columns)), [f"{m:g}" for m in grid.columns])
    ax.set_yticks(range(len(grid.index)), [str(x) for x in grid.index])
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    for (i, j), v in np.ndenumerate(grid.values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=f"A/B {kind} score")
    return fig, f"A/B {kind} score per layer and multiplier (0.5 = indifferent)"


def _dose_response(ev: SteerEval) -> tuple[Any, str]:
    from actscope.report import new_figure

    fig, ax = new_figure()
    for kind in dict.fromkeys(ev.ab.kind):
        c = ev.ab[(ev.ab.kind == kind) & (ev.ab.layer == ev.layer)].sort_values("multiplier")
        ax.errorbar(c.multiplier, c.score, yerr=c.score_sem, marker="o", label=f"A/B {kind}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("multiplier")
    ax.set_ylabel("A/B score")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    if not ev.side.empty:
        at = ev.side[ev.side.layer == ev.layer].sort_values("multiplier")
        ax2 = ax.twinx()
        ax2.plot(at.multiplier, at.kl, color="C3", marker="s", label="KL (nats)")
        ax2.set_ylabel("KL to unsteered (nats)", color="C3")
    return fig, f"Dose-response at layer {ev.layer}: A/B scores (error bars: standard error), KL"


__all__ = [
    "SteerEval",
    "choose_layer",
    "evaluate",
    "is_monotonic",
    "neutral_batches",
    "report",
    "side_effects",
]
