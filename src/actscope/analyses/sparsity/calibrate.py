"""Thresholds per Linear input for target sparsities, from calibration activations.

For every rule (TEAL, WINA, CHESS; see :mod:`actscope.interventions.sparsify_rules`) and every
unit, the distribution of the unit's score over the calibration tokens is counted in an
:class:`~actscope.stats.histogram.AbsHistogram` (log-spaced bit-pattern bins; exact for the
bfloat16 ``|x|`` of TEAL, within 0.39 % relative for float32 scores). A unit calibrated to
sparsity ``s`` gets the threshold

    t(s) = Q_s(score)     (torch.quantile's linear rule on the histogram)

so that a fraction ``s`` of the calibration entries has ``score <= t`` and is dropped; level 0
means "keep everything" (threshold -1 on non-negative scores). Allocations:

* ``uniform``: every unit of the rule at the target ``s``;
* ``greedy``: TEAL's per-block greedy search by block-output error (:mod:`.greedy`), targets
  being parameter-weighted block sparsities.

CHESS needs ``E[u_i^2]`` (mean square of the up projection per channel) before its scores
exist, so it takes a first pass over the calibration batches; the other rules take one pass.
``refine_tokens`` adds one refinement pass per plan against compounding (:mod:`.refine`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.sparsity.data import Batches
from actscope.analyses.sparsity.greedy import (
    BlockInputs,
    PathPoint,
    block_error_fn,
    greedy_block,
    pick,
)
from actscope.analyses.sparsity.quantiles import KEEP_ALL, quantile_threshold
from actscope.analyses.sparsity.refine import refine_plan
from actscope.capture.runner import run
from actscope.capture.trace import sitemap_of
from actscope.errors import ActscopeError
from actscope.interventions.sparsify import Sparsifier, UnitRule
from actscope.interventions.sparsify_plan import (
    ALLOCATIONS,
    SparsityCalibration,
    SparsityPlan,
)
from actscope.interventions.sparsify_rules import (
    Scorer,
    Unit,
    block_weights,
    check_rule,
    make_scorer,
    rule_units,
    source_site,
)
from actscope.stats.histogram import AbsHistogram


@dataclass
class CalibrationResult:
    """The thresholds file content plus tables for the report."""

    calibration: SparsityCalibration
    thresholds: pd.DataFrame
    greedy: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


class _UpSquares:
    """Per layer: sum over real tokens of u_i^2 (float64) and the token count."""

    def __init__(self) -> None:
        self.sums: dict[int, Tensor] = {}
        self.counts: dict[int, Tensor] = {}

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        layer = int(site.rsplit(".", 1)[1])
        rows = value.reshape(-1, value.shape[-1]) if mask is None else value[mask]
        s = rows.double().square().sum(dim=0)
        n = torch.tensor(rows.shape[0], device=value.device)
        if layer in self.sums:
            self.sums[layer] += s
            self.counts[layer] += n
        else:
            self.sums[layer], self.counts[layer] = s, n

    def means(self) -> dict[int, Tensor]:
        return {k: (v / self.counts[k]).float().cpu() for k, v in self.sums.items()}


class _ScoreHistograms:
    """One histogram per (score kind, unit site), fed from the unit's source site.

    ``abs`` units of one layer that read identical tensors (q, k, v read the attention input)
    share one histogram: identity is checked with ``torch.equal`` on the first batch.
    """

    def __init__(self, keyed: dict[tuple[str, str], tuple[Unit, Scorer]]) -> None:
        self.keyed = keyed
        self.by_source: dict[str, list[tuple[str, str]]] = {}
        for key, (unit, _) in keyed.items():
            self.by_source.setdefault(source_site(unit), []).append(key)
        self.hists: dict[tuple[str, str], AbsHistogram] = {}
        self.alias: dict[tuple[str, str], tuple[str, str]] = {}
        self._first: dict[int, list[tuple[tuple[str, str], Tensor]]] = {}
        self._seen_batches = 0

    def begin_batch(self, batch: Any) -> None:
        if self._seen_batches == 1:
            self._first.clear()  # identity is settled on the first batch
        self._seen_batches += 1

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        rows = value.reshape(-1, value.shape[-1]) if mask is None else value[mask]
        for key in self.by_source.get(site, []):
            if key in self.alias:
                continue
            unit, scorer = self.keyed[key]
            if self._seen_batches == 1 and scorer.kind == "abs" and self._is_alias(key, unit, rows):
                continue
            hist = self.hists.get(key)
            if hist is None:
                hist = self.hists[key] = AbsHistogram(value.device)
            exact = scorer.kind == "abs" and value.dtype == torch.bfloat16
            hist.add(scorer(rows).contiguous(), 0, exact)

    def _is_alias(self, key: tuple[str, str], unit: Unit, rows: Tensor) -> bool:
        seen = self._first.setdefault(unit.layer, [])
        for other, other_rows in seen:
            if other_rows.shape == rows.shape and torch.equal(other_rows, rows):
                self.alias[key] = other
                return True
        seen.append((key, rows))
        return False

    def counts(self) -> dict[tuple[str, str], tuple[np.ndarray, bool]]:
        out = {k: (h.numpy(), h.exact) for k, h in self.hists.items()}
        for k, target in self.alias.items():
            out[k] = out[target]
        return out


def _counter(
    tick: Callable[[str, int, int], None], stage: str, total: int
) -> Callable[[int], None]:
    """Adapt ``run``'s per-batch token counts to ``tick(stage, done_so_far, total)``."""
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        tick(stage, done[0], total)

    return advance


def check_options(
    rules: Sequence[str], targets: Sequence[float], allocations: Sequence[str]
) -> list[str]:
    """Validate calibration options before any work; returns the rules as a list."""
    checked = [check_rule(r) for r in rules]
    if not checked:
        raise ActscopeError("no sparsity rule given")
    for a in allocations:
        if a not in ALLOCATIONS:
            raise ActscopeError(f"unknown allocation '{a}'; known: {', '.join(ALLOCATIONS)}")
    if not targets:
        raise ActscopeError("no target sparsity given")
    for t in targets:
        if not 0.0 < t < 1.0:
            raise ActscopeError(f"target sparsities must lie in (0, 1), got {t}")
    return checked


def calibrate(
    lm: Any,
    data: Batches,
    *,
    rules: Sequence[str] = ("teal", "wina", "chess"),
    targets: Sequence[float] = (0.25, 0.4, 0.5, 0.65),
    allocations: Sequence[str] = ("uniform",),
    greedy_step: float = 0.05,
    greedy_tokens: int = 512,
    greedy_max_level: float = 0.95,
    greedy_rules: Sequence[str] | None = None,
    refine_tokens: int = 0,
    model_info: dict[str, Any] | None = None,
    corpus_info: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrationResult:
    """Calibrate thresholds for every (rule, allocation, target); see the module docstring.

    ``greedy_rules`` limits the (slow) greedy search to some rules (default: all of ``rules``).
    With ``refine_tokens > 0`` every plan is refined once (see :func:`refine_plan`) on the
    first ``refine_tokens`` calibration tokens.
    ``progress(stage, done, total)`` is called as passes and greedy blocks complete.
    """
    rules = check_options(rules, targets, allocations)
    sm = sitemap_of(lm)
    units = {r: rule_units(lm, r) for r in rules}
    tick = progress or (lambda stage, done, total: None)

    chess_up: dict[int, Tensor] = {}
    if "chess" in rules:
        ups = _UpSquares()
        sites = [f"up_out.{u.layer}" for u in units["chess"] if u.score == "chess"]
        run(lm, data.batches, sites, [ups], progress=_counter(tick, "E[up^2]", data.n_tokens))
        chess_up = ups.means()

    keyed: dict[tuple[str, str], tuple[Unit, Scorer]] = {}
    for r in rules:
        for u in units[r]:
            keyed.setdefault((u.score, u.site), (u, make_scorer(lm, u, chess_up)))
    hists = _ScoreHistograms(keyed)
    sources = sorted({source_site(u) for u, _ in keyed.values()}, key=sm.names.index)
    run(lm, data.batches, sources, [hists], progress=_counter(tick, "histograms", data.n_tokens))
    counts = hists.counts()

    def threshold_at(unit: Unit, level: float) -> float:
        return quantile_threshold(counts[(unit.score, unit.site)], level)

    totals = block_weights(lm)
    grand = sum(totals.values())
    plans: list[SparsityPlan] = []
    greedy_rows: list[dict[str, Any]] = []
    for r in rules:
        if "uniform" in allocations:
            for t in targets:
                levels = {u.site: float(t) for u in units[r]}
                plans.append(_plan(r, "uniform", t, units[r], levels, threshold_at, grand))
        if "greedy" in allocations and (greedy_rules is None or r in greedy_rules):
            paths = _greedy(
                lm,
                data,
                r,
                units[r],
                chess_up,
                threshold_at,
                totals,
                greedy_step,
                greedy_tokens,
                greedy_max_level,
                max(targets),
                tick,
            )
            for t in targets:
                levels = {}
                for (_layer, _block), path in paths.items():
                    levels.update(pick(path, t).levels)
                plans.append(_plan(r, "greedy", t, units[r], levels, threshold_at, grand))
            greedy_rows += [
                {
                    "rule": r,
                    "layer": layer,
                    "block": block,
                    "step": i,
                    "block_sparsity": p.sparsity,
                    "error": p.error,
                    **{f"level:{k.split('.')[0]}": v for k, v in p.levels.items()},
                }
                for (layer, block), path in paths.items()
                for i, p in enumerate(path)
            ]

    if refine_tokens > 0:
        replay = replay_batches(data, refine_tokens)
        for i, p in enumerate(plans):
            plans[i] = refine_plan(lm, p, chess_up, replay)
            tick("refine", i + 1, len(plans))
    calib = SparsityCalibration(
        model=dict(model_info or {"name": getattr(lm, "name", "model")}, n_layers=sm.n_layers),
        calibration={
            **(corpus_info or {}),
            "tokens": data.n_tokens,
            "rules": rules,
            "targets": list(targets),
            "allocations": list(allocations),
            "greedy_step": greedy_step,
            "greedy_tokens": greedy_tokens,
            "greedy_rules": list(greedy_rules if greedy_rules is not None else rules),
            "refine_tokens": refine_tokens,
        },
        plans=plans,
        chess_up_sq={k: v.tolist() for k, v in chess_up.items()},
    )
    table = pd.DataFrame(
        [
            {
                "rule": p.rule,
                "allocation": p.allocation,
                "target": p.target,
                "site": s,
                "layer": int(s.rsplit(".", 1)[1]),
                "level": p.levels[s],
                "threshold": th,
            }
            for p in plans
            for s, th in p.thresholds.items()
        ]
    )
    return CalibrationResult(calib, table, pd.DataFrame(greedy_rows), {"tokens": data.n_tokens})


def _plan(
    rule: str,
    allocation: str,
    target: float,
    units: Sequence[Unit],
    levels: dict[str, float],
    threshold_at: Callable[[Unit, float], float],
    grand_total: int,
) -> SparsityPlan:
    thresholds = {u.site: threshold_at(u, levels[u.site]) for u in units}
    expected = sum(levels[u.site] * u.n_weights for u in units) / grand_total
    return SparsityPlan(rule, allocation, float(target), dict(levels), thresholds, expected)


def replay_batches(data: Batches, tokens: int) -> list[Any]:
    """The first rows of the calibration batches holding at least ``tokens`` real tokens."""
    out, n = [], 0
    for b in data.batches:
        if n >= tokens:
            break
        lengths = b.lengths.tolist()
        rows = 0
        while rows < len(lengths) and n < tokens:
            n += int(lengths[rows])
            rows += 1
        keep = slice(0, rows)
        out.append(
            dataclasses.replace(
                b,
                input_ids=b.input_ids[keep],
                attention_mask=b.attention_mask[keep],
                sample_ids=b.sample_ids[keep],
                domain_ids=b.domain_ids[keep],
                chunk_ids=b.chunk_ids[keep],
            )
        )
    return out


def _greedy(
    lm: Any,
    data: Batches,
    rule: str,
    units: Sequence[Unit],
    chess_up: dict[int, Tensor],
    threshold_at: Callable[[Unit, float], float],
    totals: dict[tuple[int, str], int],
    step: float,
    tokens: int,
    max_level: float,
    max_target: float,
    tick: Callable[[str, int, int], None],
) -> dict[tuple[int, str], list[PathPoint]]:
    if not 0.0 < step < 1.0:
        raise ActscopeError(f"the greedy step must lie in (0, 1), got {step}")
    inputs = BlockInputs(lm).capture(replay_batches(data, tokens))
    blocks = sorted({(u.layer, u.block) for u in units})
    paths: dict[tuple[int, str], list[PathPoint]] = {}
    for i, (layer, block) in enumerate(blocks):
        mine = [u for u in units if (u.layer, u.block) == (layer, block)]
        rules = {
            u.site: UnitRule(u, make_scorer(lm, u, chess_up), threshold=KEEP_ALL) for u in mine
        }
        sp = Sparsifier(lm, list(rules.values()), record=False)
        err = block_error_fn(inputs, layer, block, sp)
        paths[(layer, block)] = greedy_block(
            mine,
            rules,
            threshold_at,
            err,
            totals[(layer, block)],
            step=step,
            max_target=max_target,
            max_level=max_level,
        )
        tick(f"greedy {rule}", i + 1, len(blocks))
    return paths
