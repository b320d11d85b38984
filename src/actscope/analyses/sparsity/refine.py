"""Refinement of calibrated thresholds against compounding (one fixed-point step).

Thresholds calibrated on dense activations drop more than their level once every unit is
active: upstream sparsification shrinks the inputs of later layers, so more of their entries
fall below a threshold measured on the dense model (on SmolLM2, TEAL at a 0.65 target
realised 0.71). :func:`refine_plan` runs the calibration tokens with the plan applied, counts
each unit's score distribution *before its own edit* (hence with every upstream unit active)
and sets the unit's threshold again to ``Q_level`` of that distribution. Levels, and the
expected weight sparsity, are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from actscope.analyses.sparsity.quantiles import quantile_threshold
from actscope.capture.runner import run
from actscope.capture.trace import sitemap_of
from actscope.interventions.sparsify import Sparsifier
from actscope.interventions.sparsify_plan import SparsityCalibration, SparsityPlan
from actscope.interventions.sparsify_rules import Scorer, make_scorer, rule_units
from actscope.stats.histogram import AbsHistogram


class _Refiner:
    """Observer of a plan's Sparsifier: score histograms of every unit under sparsification."""

    def __init__(self, scorers: dict[str, Scorer]) -> None:
        self.scorers = scorers
        self.hists: dict[str, AbsHistogram] = {}

    def __call__(self, site: str, value: Tensor, counted: Tensor | None) -> None:
        scorer = self.scorers[site]
        rows = value.reshape(-1, value.shape[-1]) if counted is None else value[counted]
        hist = self.hists.get(site)
        if hist is None:
            hist = self.hists[site] = AbsHistogram(value.device)
        exact = scorer.kind == "abs" and value.dtype == torch.bfloat16
        hist.add(scorer(rows).contiguous(), 0, exact)


class _MaskFeeder:
    """A run() consumer that only declares each batch's padding to a Sparsifier."""

    def __init__(self, sparsifier: Sparsifier) -> None:
        self.sparsifier = sparsifier

    def begin_batch(self, batch: Any) -> None:
        self.sparsifier.set_mask(batch.attention_mask)

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        return None


def refine_plan(
    lm: Any, plan: SparsityPlan, chess_up: dict[int, Tensor], batches: Sequence[Any]
) -> SparsityPlan:
    """``plan`` with every threshold re-measured under the plan itself (module docstring)."""
    units = {u.site: u for u in rule_units(lm, plan.rule)}
    scorers = {site: make_scorer(lm, units[site], chess_up) for site in plan.thresholds}
    refiner = _Refiner(scorers)
    calib = SparsityCalibration({}, {}, [plan], {k: v.tolist() for k, v in chess_up.items()})
    sp = Sparsifier.from_plan(lm, plan, calib, record=False, observer=refiner)
    last = f"resid_post.{sitemap_of(lm).n_layers - 1}"
    with sp:
        run(lm, batches, [last], [_MaskFeeder(sp)])
    thresholds = {}
    for site, level in plan.levels.items():
        h = refiner.hists[site]
        thresholds[site] = quantile_threshold((h.numpy(), h.exact), level)
    return dataclasses.replace(plan, thresholds=thresholds)
