"""Steering evaluation: side effects against a direct KL, layer choice, full run and report."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tests._models import get_model

from actscope.analyses.steer_ab import ab_sweep
from actscope.analyses.steer_eval import (
    choose_layer,
    evaluate,
    is_monotonic,
    report,
    side_effects,
)
from actscope.capture import forward
from actscope.interventions.steering.apply import Steering
from actscope.interventions.steering.datasets import ABItem
from actscope.interventions.steering.vector import SteeringVector

ITEMS = [
    ABItem("Pick one.\n(A) cats\n(B) dogs", "A", "B"),
    ABItem("Which is better?\n(A) tea\n(B) coffee", "B", "A"),
    ABItem("A longer question with more words in it?\n(A) yes\n(B) no", "A", "B"),
]


def _vec(lm: object) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    d = lm.model.config.hidden_size  # type: ignore[attr-defined]
    return SteeringVector({0: torch.randn(d, generator=g), 1: torch.randn(d, generator=g)})


def test_sweep_side_effects_and_layer_choice() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    ab = ab_sweep(lm, v, ITEMS, [0, 1], [-2.0, 0.0, 2.0], kinds=("letter", "answer"))
    assert choose_layer(ab)[1] in (0, 1)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    batch = type("B", (), {"input_ids": ids, "attention_mask": mask, "to": lambda self, d: self})()
    side = side_effects(lm, v, [(0, 0.0), (0, 3.0)], [batch])
    zero, big = side.iloc[0], side.iloc[1]
    assert zero.kl == pytest.approx(0.0, abs=1e-6) and zero.ppl == pytest.approx(zero.base_ppl)
    assert big.kl > 0 and big.tokens == 9
    # KL by hand for the steered configuration
    p = torch.log_softmax(forward(lm.model, ids, mask).logits.float(), -1)
    with Steering(lm, v, layers=[0], coef=3.0):
        q = torch.log_softmax(forward(lm.model, ids, mask).logits.float(), -1)
    kl = ((p.exp() * (p - q)).sum(-1) * mask).sum() / mask.sum()
    assert big.kl == pytest.approx(float(kl), rel=1e-4)


def test_evaluate_builds_a_report_with_heatmap_curve_and_samples() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    ev = evaluate(lm, v, ITEMS, multipliers=[-1, 1], prompts=["hi", "hello"], max_new_tokens=3)
    assert sorted(ev.ab.multiplier.unique()) == [-1.0, 0.0, 1.0]
    assert {s["multiplier"] for s in ev.samples} == {-1.0, 0.0, 1.0} and len(ev.samples) == 6
    assert set(ev.summary) >= {"layer", "letter_scores", "answer_monotonic", "chosen_by"}
    html = report(ev, "tiny steering").render()
    assert html.count("<img") == 3 and "Samples" in html and "Dose-response" in html


def test_choose_layer_prefers_monotonic_curves_then_spread() -> None:
    rows = []
    curves = {
        ("letter", 3): [0.5, 0.5, 0.52],
        ("answer", 6): [0.2, 0.9, 0.8],
        ("answer", 12): [0.4, 0.7, 0.9],
        ("answer", 15): [0.45, 0.6, 0.7],
    }
    for (kind, layer), scores in curves.items():
        rows += [
            {"kind": kind, "layer": layer, "multiplier": m, "score": sc}
            for m, sc in zip((-1.0, 0.0, 1.0), scores, strict=True)
        ]
    assert choose_layer(pd.DataFrame(rows)) == ("answer", 12)


def test_is_monotonic() -> None:
    assert is_monotonic([0.1, 0.2, 0.2, 0.9])
    assert not is_monotonic([0.1, 0.3, 0.2])
    assert is_monotonic([0.1, 0.3, 0.29], tol=0.02)
