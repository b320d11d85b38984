"""Quality under sparsity: held-out perplexity for every rule, allocation and target.

For each configuration the model runs over the held-out batches with a
:class:`~actscope.interventions.sparsify.Sparsifier` attached (masked-dense emulation: this
measures quality only). Per configuration:

* ``ppl = exp(sum NLL / N)`` over every next-token prediction between real tokens;
* ``ppl_sparsified``: the same restricted to predictions made at sparsified positions (with a
  prefill fraction ``f < 1`` the first tokens of each row are dense, and their predictions
  would flatter the sparse model);
* ``delta_ppl_pct = 100 (ppl / ppl_dense - 1)``;
* ``realised_sparsity``: zero entries / entries over every unit's input at sparsified tokens
  (entries-weighted mean over units), next to the ``target``;
* ``weight_sparsity``: skipped / all Linear weights of the decoder blocks at the realised
  per-unit sparsities, next to ``expected_weight_sparsity`` of the plan (calibration data).

Target 0 is the dense model (no hooks), measured once and repeated for every rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from actscope.analyses.perplexity import token_nll
from actscope.analyses.sparsity.data import Batches
from actscope.capture.runner import forward
from actscope.errors import ActscopeError
from actscope.interventions.sparsify import Sparsifier, prefill_positions
from actscope.interventions.sparsify_plan import SparsityCalibration
from actscope.interventions.sparsify_rules import check_rule


@dataclass
class SweepResult:
    """``table``: one row per configuration; ``units``: realised sparsity per unit."""

    table: pd.DataFrame
    units: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def held_out_nll(
    lm: Any,
    data: Batches,
    sparsifier: Sparsifier | None,
    prefill_fraction: float,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Summed NLL and counts over all predictions and over sparsified-position predictions."""
    device = lm.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.inference_mode():
        for batch in data.batches:
            b = batch.to(device)
            if sparsifier is not None:
                sparsifier.set_mask(b.attention_mask)
            logits = forward(lm.model, b.input_ids, b.attention_mask).logits
            nll, valid = token_nll(logits, b.input_ids, b.attention_mask)
            sel = prefill_positions(b.attention_mask, prefill_fraction)[:, :-1] & valid
            sums += torch.stack(
                [
                    (nll * valid).sum().double(),
                    valid.sum().double(),
                    (nll * sel).sum().double(),
                    sel.sum().double(),
                ]
            )
            if progress is not None:
                progress(int(b.attention_mask.sum()))
    total, count, total_s, count_s = sums.tolist()
    return {
        "nll": total / count if count else math.nan,
        "ppl": math.exp(total / count) if count else math.nan,
        "ppl_sparsified": math.exp(total_s / count_s) if count_s else math.nan,
        "predictions": int(count),
        "sparsified_predictions": int(count_s),
    }


def sparsity_sweep(
    lm: Any,
    data: Batches,
    calibration: SparsityCalibration | None,
    *,
    rules: Sequence[str] = ("teal", "wina", "chess"),
    targets: Sequence[float] = (0.0, 0.25, 0.4, 0.5, 0.65),
    allocations: Sequence[str] = ("uniform",),
    prefill_fraction: float = 1.0,
    mode: str = "threshold",
    progress: Callable[[str, int], None] | None = None,
) -> SweepResult:
    """Held-out perplexity and realised sparsity for every (rule, allocation, target).

    In threshold mode, (rule, allocation) pairs without plans in ``calibration`` are skipped
    and listed in ``info["skipped"]``; a missing target of an existing pair is an error.
    """
    if mode not in ("threshold", "topk"):
        raise ActscopeError(f"mode must be 'threshold' or 'topk', got {mode!r}")
    if mode == "threshold" and calibration is None:
        raise ActscopeError("threshold mode needs a thresholds file (run `sparsity calibrate`)")
    rules = [check_rule(r) for r in rules]
    tick = progress or (lambda label, n: None)
    t0 = time.perf_counter()
    dense = held_out_nll(lm, data, None, prefill_fraction, lambda n: tick("dense", n))
    rows: list[dict[str, Any]] = []
    unit_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for rule in rules:
        for alloc in allocations if mode == "threshold" else ("uniform",):
            if mode == "threshold" and not _has(calibration, rule, alloc):
                skipped.append(f"{rule}/{alloc}")
                continue
            rows.append(_row(rule, alloc, mode, 0.0, prefill_fraction, dense, dense))
            for target in (t for t in targets if t > 0):
                sp, expected, levels = _sparsifier(
                    lm, calibration, rule, alloc, target, mode, prefill_fraction
                )
                label = f"{rule}/{alloc} {target:g}"
                with sp:
                    res = held_out_nll(
                        lm, data, sp, prefill_fraction, lambda n, lb=label: tick(lb, n)
                    )
                real = sp.realised()
                row = _row(rule, alloc, mode, target, prefill_fraction, res, dense)
                row["realised_sparsity"] = sp.overall()
                row["weight_sparsity"] = sp.weight_sparsity(real)
                row["expected_weight_sparsity"] = expected
                rows.append(row)
                unit_rows += [
                    {
                        "rule": rule,
                        "allocation": alloc,
                        "mode": mode,
                        "target": target,
                        "site": site,
                        "layer": int(site.rsplit(".", 1)[1]),
                        "level": levels.get(site, target),
                        "realised": v,
                    }
                    for site, v in real.items()
                ]
    info = {
        "seconds": time.perf_counter() - t0,
        "tokens": data.n_tokens,
        "prefill_fraction": prefill_fraction,
        "mode": mode,
        "dense_ppl": dense["ppl"],
        "skipped": skipped,
    }
    return SweepResult(pd.DataFrame(rows), pd.DataFrame(unit_rows), info)


def _has(calibration: SparsityCalibration | None, rule: str, alloc: str) -> bool:
    """Whether the thresholds file holds any plan for ``(rule, alloc)``."""
    return calibration is not None and any(
        p.rule == rule and p.allocation == alloc for p in calibration.plans
    )


def _sparsifier(
    lm: Any,
    calibration: SparsityCalibration | None,
    rule: str,
    alloc: str,
    target: float,
    mode: str,
    prefill_fraction: float,
) -> tuple[Sparsifier, float, dict[str, float]]:
    if mode == "topk":
        chess = calibration.chess_tensors() if calibration is not None else None
        sp = Sparsifier.exact_topk(
            lm, rule, target, chess_up_sq=chess, prefill_fraction=prefill_fraction
        )
        return sp, math.nan, {}
    assert calibration is not None
    plan = calibration.plan(rule, target, alloc)
    sp = Sparsifier.from_plan(lm, plan, calibration, prefill_fraction=prefill_fraction)
    return sp, plan.expected_weight_sparsity, plan.levels


def _row(
    rule: str,
    alloc: str,
    mode: str,
    target: float,
    f: float,
    res: dict[str, float],
    dense: dict[str, float],
) -> dict[str, Any]:
    return {
        "rule": rule,
        "allocation": alloc,
        "mode": mode,
        "target": target,
        "prefill_fraction": f,
        "ppl": res["ppl"],
        "ppl_sparsified": res["ppl_sparsified"],
        "delta_ppl_pct": 100.0 * (res["ppl"] / dense["ppl"] - 1.0),
        "realised_sparsity": 0.0 if target == 0 else math.nan,
        "weight_sparsity": 0.0 if target == 0 else math.nan,
        "expected_weight_sparsity": 0.0 if target == 0 else math.nan,
        "predictions": res["predictions"],
        "sparsified_predictions": res["sparsified_predictions"],
    }
