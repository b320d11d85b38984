"""Perplexity sweep: dense baseline, prefill fraction, realised sparsity next to the target."""

from __future__ import annotations

import random

import pytest
from tests._models import get_model

from actscope.analyses.perplexity import perplexity
from actscope.analyses.sparsity import calibrate, held_out_nll, sparsity_sweep, token_batches
from actscope.data import Corpus, Sample
from actscope.errors import ActscopeError
from actscope.interventions.sparsify import Sparsifier


def _data(lm, tokens: int = 500):
    rng = random.Random(2)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    corpus = Corpus(
        [Sample(f"s{i}", "x", " ".join(rng.choice(words) for _ in range(100))) for i in range(12)],
        "synthetic",
    )
    return token_batches(lm, corpus, tokens=tokens, seq_len=48, batch_size=4)


def test_dense_row_is_the_model_perplexity() -> None:
    lm = get_model("tiny:llama")
    data = _data(lm)
    res = sparsity_sweep(lm, data, None, rules=("teal", "wina"), targets=(0.0, 0.5), mode="topk")
    t = res.table
    assert len(t) == 4 and set(t.rule) == {"teal", "wina"}
    dense = perplexity(lm, data.batches)
    assert t[t.target == 0].ppl.tolist() == pytest.approx([dense, dense], rel=1e-9)
    sparse = t[t.target == 0.5]
    assert (sparse.realised_sparsity - 0.5).abs().max() < 1e-9  # exact top-k: d = 64, 128
    assert (sparse.ppl != dense).all()
    assert set(res.units.site) >= {"q_in.0", "down_in.1"}


def test_prefill_fraction_zero_leaves_the_model_dense() -> None:
    lm = get_model("tiny:llama")
    data = _data(lm, 300)
    dense = held_out_nll(lm, data, None, 1.0)
    sp = Sparsifier.exact_topk(lm, "teal", 0.65, prefill_fraction=0.0)
    with sp:
        res = held_out_nll(lm, data, sp, 0.0)
    assert res["ppl"] == pytest.approx(dense["ppl"], rel=1e-12)
    assert res["sparsified_predictions"] == 0
    half = sparsity_sweep(
        lm, data, None, rules=("teal",), targets=(0.0, 0.5), mode="topk", prefill_fraction=0.5
    ).table
    row = half[half.target == 0.5].iloc[0]
    assert row.prefill_fraction == 0.5
    assert 0 < row.sparsified_predictions < row.predictions


def test_threshold_mode_uses_the_plans_and_skips_missing_pairs() -> None:
    lm = get_model("tiny:llama")
    data = _data(lm)
    cal = calibrate(lm, data, rules=("teal",), targets=(0.4,)).calibration
    res = sparsity_sweep(
        lm, data, cal, rules=("teal", "wina"), targets=(0.0, 0.4), allocations=("uniform", "greedy")
    )
    assert sorted(res.info["skipped"]) == ["teal/greedy", "wina/greedy", "wina/uniform"]
    row = res.table[res.table.target == 0.4].iloc[0]
    assert row.expected_weight_sparsity == pytest.approx(0.4)
    assert abs(row.weight_sparsity - 0.4) < 0.05
    with pytest.raises(ActscopeError, match="no teal/uniform plan at target 0.5"):
        sparsity_sweep(lm, data, cal, rules=("teal",), targets=(0.5,))
    with pytest.raises(ActscopeError, match="needs a thresholds file"):
        sparsity_sweep(lm, data, None, rules=("teal",))
