"""Refinement: thresholds re-measured under the plan itself correct the overshoot."""

from __future__ import annotations

import pytest
from tests._corpora import word_corpus
from tests._models import get_model
from tests._sparsity import run_plan

from actscope.analyses.sparsity import calibrate, refine_plan, token_batches
from actscope.data import Corpus


def _corpus(n: int = 40) -> Corpus:
    return word_corpus(n)


def test_refinement_corrects_the_compounding_overshoot() -> None:
    lm = get_model("tiny:llama")
    data = token_batches(lm, _corpus(40), tokens=2000, seq_len=64)
    plain = calibrate(lm, data, rules=("teal",), targets=(0.65,)).calibration
    refined = calibrate(lm, data, rules=("teal",), targets=(0.65,), refine_tokens=2000)
    assert refined.calibration.calibration["refine_tokens"] == 2000
    p0, p1 = plain.plan("teal", 0.65), refined.calibration.plan("teal", 0.65)
    assert p0.levels == p1.levels and p0.thresholds != p1.thresholds
    assert p1.thresholds["q_in.0"] == pytest.approx(p0.thresholds["q_in.0"])  # no upstream unit
    err0 = abs(run_plan(lm, p0, plain, data).overall() - 0.65)
    err1 = abs(run_plan(lm, p1, refined.calibration, data).overall() - 0.65)
    assert err1 < err0 and err1 < 0.01


def test_refine_plan_keeps_levels_and_chess_works() -> None:
    lm = get_model("tiny:llama")
    data = token_batches(lm, _corpus(12), tokens=500, seq_len=64)
    res = calibrate(lm, data, rules=("chess",), targets=(0.5,))
    plan = res.calibration.plan("chess", 0.5)
    again = refine_plan(lm, plan, res.calibration.chess_tensors(), data.batches)
    assert again.levels == plan.levels and set(again.thresholds) == set(plan.thresholds)
    assert again.expected_weight_sparsity == plan.expected_weight_sparsity
