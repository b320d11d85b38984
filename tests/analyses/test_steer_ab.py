"""A/B scores: letter and answer scores against direct computations, cached prefix, sweep."""

from __future__ import annotations

import math

import pytest
import torch
from tests._models import get_model

from actscope.analyses.steer_ab import Scorer, ab_scores, ab_sweep, choices, letter_ids
from actscope.capture import forward
from actscope.errors import DataError
from actscope.interventions.steering.apply import Steering
from actscope.interventions.steering.datasets import ABItem, chat_prompt
from actscope.interventions.steering.generate import instruction_window
from actscope.interventions.steering.vector import SteeringVector

ITEMS = [
    ABItem("Pick one.\n(A) cats are lovely\n(B) dogs", "A", "B"),
    ABItem("Which is better?\n(A) tea\n(B) a cup of coffee", "B", "A"),
    ABItem("A longer question with more words in it?\n(A) yes\n(B) no way", "A", "B"),
]


def _vec(lm: object) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    d = lm.model.config.hidden_size  # type: ignore[attr-defined]
    return SteeringVector({0: torch.randn(d, generator=g), 1: torch.randn(d, generator=g)})


def _logp(lm: object, text: str) -> torch.Tensor:
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])  # type: ignore[attr-defined]
    return torch.log_softmax(forward(lm.model, ids).logits[0].float(), -1), ids[0]  # type: ignore[attr-defined,return-value]


def test_letter_score_equals_a_direct_unbatched_computation() -> None:
    lm = get_model("tiny:llama")
    df = ab_scores(lm, ITEMS, batch_size=2)
    ids = letter_ids(lm.tokenizer, ["A", "B"])
    for item, row in zip(ITEMS, df.itertuples(), strict=True):
        text, _ = chat_prompt(lm.tokenizer, item.question)
        logp, _ = _logp(lm, text + "(")
        p = logp[-1].exp()
        pm, po = float(p[ids[item.matching]]), float(p[ids[item.not_matching]])
        assert row.score == pytest.approx(pm / (pm + po), rel=1e-4)
        assert row.p_match == pytest.approx(pm, rel=1e-4)


def test_answer_score_equals_summed_log_likelihood_of_the_choice_texts() -> None:
    lm = get_model("tiny:llama")
    df = ab_scores(lm, ITEMS, kind="answer", batch_size=3)
    for item, row in zip(ITEMS, df.itertuples(), strict=True):
        prompt, _ = chat_prompt(lm.tokenizer, item.question)
        n = len(lm.tokenizer(prompt)["input_ids"])  # byte tokens: the prompt is a token prefix
        lp = {}
        for letter in (item.matching, item.not_matching):
            logp, ids = _logp(lm, prompt + choices(item)[letter])
            lp[letter] = float(sum(logp[t - 1, ids[t]] for t in range(n, len(ids))))
        assert row.logp_match == pytest.approx(lp[item.matching], rel=1e-4)
        diff = lp[item.not_matching] - lp[item.matching]
        assert row.score == pytest.approx(1 / (1 + math.exp(diff)), rel=1e-4)


@pytest.mark.parametrize("kind", ["letter", "answer"])
def test_cached_prefix_equals_full_forward_passes(kind: str) -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    win = instruction_window(lm)
    lengths: list[int] = []
    hook = lm.model.register_forward_pre_hook(
        lambda mod, args, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        cached = Scorer(lm, ITEMS, kind, positions=win, batch_size=2)  # type: ignore[arg-type]
        assert all(run.cached for _, parts in cached.chunks for _, run in parts)
        n_before = len(lengths)
        got = cached(Steering(lm, v, layers=[1], coef=3.0, positions=win))
    finally:
        hook.remove()
    prefix_len = max(p.prefix.shape[1] for _, parts in cached.chunks for p, _ in parts)
    assert max(lengths[n_before:]) < prefix_len  # only the suffixes were re-run
    full = Scorer(lm, ITEMS, kind, positions="all", batch_size=3)  # type: ignore[arg-type]
    assert not any(run.cached for _, parts in full.chunks for _, run in parts)
    ref = full(Steering(lm, v, layers=[1], coef=3.0, positions=win))
    col = "score" if kind == "letter" else "logp_match"  # answer scores saturate here
    torch.testing.assert_close(
        torch.tensor(got[col].to_numpy()), torch.tensor(ref[col].to_numpy()), atol=1e-4, rtol=1e-4
    )
    base = full(None)
    assert (got[col] - base[col]).abs().max() > 1e-4  # steering acted


def test_sweep_structure_and_unsteered_column() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    df = ab_sweep(
        lm,
        v,
        ITEMS,
        [0, 1],
        [-2.0, 0.0, 2.0],
        kinds=("letter", "answer"),
        positions=instruction_window(lm),
    )
    assert len(df) == 12 and set(df.kind) == {"letter", "answer"}
    zero = df[df.multiplier == 0.0]
    for kind in ("letter", "answer"):
        scores = zero[zero.kind == kind].score.to_numpy()
        assert scores[0] == scores[1]
    assert "p_mass" in df and df[df.kind == "answer"].p_mass.isna().all()


def test_choice_parsing() -> None:
    assert choices(ITEMS[1]) == {"A": "tea", "B": "a cup of coffee"}
    with pytest.raises(DataError, match=r"\(B\)"):
        choices(ABItem("Q?\n(A) one\n(C) two", "A", "B"))
