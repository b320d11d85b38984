"""End-to-end effect of quantization: held-out perplexity under W/A schemes and SmoothQuant.

For every scheme (see :data:`actscope.interventions.quant.SCHEMES`) the perplexity
``exp(sum NLL / N)`` over the real predicted tokens of the evaluation batches is measured
with the decoder's weights and Linear inputs fake-quantized; then, for the schemes that
quantize activations, with SmoothQuant folded in for every ``alpha`` of the sweep (act
scales from the calibration part of the corpus). A control row folds smoothing without any
quantization (``fp`` + smoothing): in exact arithmetic it changes nothing, so its perplexity
measures the rounding of the folded weights to the model's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.perplexity import NLL
from actscope.capture.runner import forward
from actscope.capture.trace import Trace
from actscope.interventions.quant.apply import SCHEMES, Scheme, get_scheme, quantized

DEFAULT_SCHEMES = ("W8A8", "W8A8-static", "W4A16", "W4A8")
DEFAULT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def nll_under(lm: Any, batches: Sequence[Any], trace: Trace | None = None) -> NLL:
    """Summed next-token NLL over ``batches``, declaring each batch's padding to ``trace``.

    Same definition as :func:`actscope.analyses.perplexity.token_nll` (float32 log-softmax,
    a position counts when it and its target are real tokens), computed one sequence at a
    time so that large vocabularies (Gemma: 262k) never need a float32 copy of all logits.
    """
    model = getattr(lm, "model", lm)
    device = model.get_input_embeddings().weight.device
    acc = NLL()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode():
        for batch in batches:
            b = batch.to(device) if hasattr(batch, "to") else batch
            if trace is not None:
                trace.set_mask(b.attention_mask)
            logits = forward(model, b.input_ids, b.attention_mask).logits
            valid = b.attention_mask[:, :-1].bool() & b.attention_mask[:, 1:].bool()
            for row in range(logits.shape[0]):
                nll = torch.nn.functional.cross_entropy(
                    logits[row, :-1].float(), b.input_ids[row, 1:], reduction="none"
                )
                total += (nll * valid[row]).sum(dtype=torch.float64)
            count += valid.sum()
    acc.total, acc.count = float(total), int(count)
    return acc


def perplexity_sweep(
    lm: Any,
    batches: Sequence[Any],
    act_scales: Mapping[str, Tensor],
    *,
    schemes: Sequence[str] = DEFAULT_SCHEMES,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    smoothing: bool = True,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Perplexity of ``lm`` as is, under each scheme, and with SmoothQuant per ``alpha``.

    Columns: scheme, description, smoothing (bool), alpha (NaN without), nll (mean, nats),
    perplexity, delta_ppl (vs the model as is), recovered (fraction of the scheme's
    perplexity increase removed by smoothing; NaN for unsmoothed rows), tokens.
    """
    chosen = [get_scheme(s) for s in schemes]
    plan: list[tuple[Scheme, float | None]] = [(SCHEMES["fp"], None)]
    plan += [(s, None) for s in chosen if s.name != "fp"]
    if smoothing and alphas:
        plan.append((SCHEMES["fp"], 0.5))
        plan += [(s, a) for s in chosen if s.act is not None for a in alphas]
    rows: list[dict[str, Any]] = []
    for scheme, alpha in plan:
        label = scheme.name + ("" if alpha is None else f" + SmoothQuant a={alpha:g}")
        if progress is not None:
            progress(label)
        ctx = (
            contextlib.nullcontext(None)
            if scheme.name == "fp" and alpha is None
            else quantized(lm, scheme, act_scales=act_scales, alpha=alpha)
        )
        with ctx as trace:
            nll = nll_under(lm, batches, trace)
        rows.append(
            {
                "scheme": scheme.name,
                "description": scheme.describe(),
                "smoothing": alpha is not None,
                "alpha": float("nan") if alpha is None else float(alpha),
                "nll": nll.mean,
                "perplexity": nll.perplexity,
                "tokens": nll.count,
            }
        )
    df = pd.DataFrame(rows)
    base = float(df.loc[(df.scheme == "fp") & ~df.smoothing, "perplexity"].iloc[0])
    df["delta_ppl"] = df["perplexity"] - base
    plain = df[~df.smoothing].set_index("scheme")["perplexity"]
    rec = []
    for _, r in df.iterrows():
        if not r.smoothing or r.scheme == "fp":
            rec.append(float("nan"))
            continue
        gap = float(plain[r.scheme]) - base
        rec.append((float(plain[r.scheme]) - r.perplexity) / gap if gap > 0 else float("nan"))
    df["recovered"] = rec
    return df
