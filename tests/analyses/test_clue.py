"""CLUE: centroid scoring, held-out folds, answer summaries, and the arithmetic task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.analyses.explain.answers import Answer, generate_answers, summarise_answers
from actscope.analyses.explain.arithmetic import arithmetic_problems, is_correct, parse_answer
from actscope.analyses.explain.clue import (
    auroc,
    bootstrap_ci,
    centroids,
    cross_validated_scores,
    per_layer_auroc,
    score,
)
from actscope.capture import Trace, forward
from actscope.errors import DataError


def _deltas(n: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    x = rng.normal(size=(n, 3, 8))
    x[y, 1] += shift  # successes move in layer 1 only
    return x, y


def test_separable_deltas_give_auroc_near_one_and_noise_near_half() -> None:
    x, y = _deltas(200, shift=3.0)
    s, fold = cross_validated_scores(x, y, folds=5)
    assert auroc(s, y) > 0.97
    assert set(fold) == set(range(5))
    layers = per_layer_auroc(x, y).set_index("layer")["auroc"]
    assert layers[1] > 0.97 and abs(layers[0] - 0.5) < 0.15
    xn, yn = _deltas(200, shift=0.0, seed=1)
    sn, _ = cross_validated_scores(xn, yn)
    assert abs(auroc(sn, yn) - 0.5) < 0.12
    lo, hi = bootstrap_ci(s, y, n=200)
    assert lo <= auroc(s, y) <= hi


def test_scores_use_only_other_folds() -> None:
    x, y = _deltas(60, shift=1.0)
    s, fold = cross_validated_scores(x, y, folds=3, seed=4)
    flat = x.reshape(60, -1)
    held = fold == 0
    mu_s, mu_f = centroids(flat[~held], y[~held])
    np.testing.assert_allclose(s[held], score(flat[held], mu_s, mu_f))
    expected = np.linalg.norm(flat[held] - mu_f, axis=1) - np.linalg.norm(flat[held] - mu_s, axis=1)
    np.testing.assert_allclose(s[held], expected)


def test_clue_needs_both_outcomes() -> None:
    x, _ = _deltas(20, 1.0)
    with pytest.raises(DataError, match="at least 2 correct and 2 wrong"):
        cross_validated_scores(x, np.ones(20, dtype=bool))
    assert np.isnan(auroc(np.zeros(3), [True, True, True]))


def test_arithmetic_task() -> None:
    probs = arithmetic_problems(50, seed=3)
    assert probs == arithmetic_problems(50, seed=3)
    assert len({(p.a, p.op, p.b) for p in probs}) == 50
    for p in probs:
        assert p.result == eval(f"{p.a} {p.op} {p.b}")
        assert p.prompt.endswith(f"Question: {p.question}\nAnswer:")
        assert is_correct(p, f" {p.a} {p.op} {p.b} = {p.result}\nQuestion: 1 + 1")
        assert not is_correct(p, f" {p.result + 1}")
    assert parse_answer(" 12 - 5 = 7") == 7
    assert parse_answer(" no idea") is None
    assert parse_answer("\n 3\n 4") == 3


def test_summaries_match_a_manual_unpadded_run() -> None:
    lm = get_model("tiny:llama")
    tok = lm.tokenizer
    answers = [
        Answer(tok("Q: 2+2?")["input_ids"], tok(" 4 ok")["input_ids"], " 4 ok"),
        Answer(tok("Question: what is 10 + 13?")["input_ids"], tok(" 23")["input_ids"], " 23"),
        Answer(tok("Q")["input_ids"], [], ""),
    ]
    summarise_answers(lm, answers, batch_size=2)
    assert answers[2].delta is None and np.isnan(answers[2].mean_logprob)
    sites = ["resid_post.0", "resid_post.1"]
    for a in answers[:2]:
        ids = torch.tensor([a.prompt_ids + a.response_ids])
        with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
            logits = forward(lm.model, ids).logits[0].float()
        p, n = len(a.prompt_ids), len(a.response_ids)
        want = np.stack([(tr[s][0, p + n - 1] - tr[s][0, p - 1]).numpy() for s in sites])
        np.testing.assert_allclose(a.delta, want, atol=1e-5)
        logp = torch.log_softmax(logits[p - 1 : p + n - 1], -1)
        lp = float(logp[torch.arange(n), torch.tensor(a.response_ids)].mean())
        assert a.mean_logprob == pytest.approx(lp, abs=1e-5)


def test_generation_is_cut_at_the_stop_text() -> None:
    lm = get_model("tiny:llama")
    out = generate_answers(lm, ["abc", "a longer prompt"], max_new_tokens=6, batch_size=2)
    assert len(out) == 2
    for a in out:
        assert "\n" not in a.text and len(a.response_ids) <= 6
        assert a.text == lm.tokenizer.decode(a.response_ids)
    single = generate_answers(lm, ["a longer prompt"], max_new_tokens=6, batch_size=1)
    assert single[0].response_ids == out[1].response_ids  # left padding does not change it
