"""Conditional steering: scores, per-sample gates, per-token re-evaluation, rules, search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.capture import Trace, forward
from actscope.errors import ActscopeError
from actscope.interventions.steering.apply import Steering
from actscope.interventions.steering.conditional import (
    Condition,
    all_of,
    any_of,
    f1_score,
    roc_auc,
    search_condition,
)
from actscope.interventions.steering.datasets import ContrastDataset
from actscope.interventions.steering.generate import encode_prompts, generate
from actscope.interventions.steering.vector import SteeringVector

PROMPTS = ["apple apple apple", "zzzz zzzz", "apple pie", "qqqq"]


def _vec(lm: object, layers: tuple[int, ...] = (1,)) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    d = lm.model.config.hidden_size  # type: ignore[attr-defined]
    return SteeringVector({x: torch.randn(d, generator=g) for x in layers})


def _prompt_means(lm: object, site: str, prompts: list[str]) -> torch.Tensor:
    """Mean hidden state of each prompt at ``site`` (no template: every real token)."""
    enc = encode_prompts(lm, prompts, chat=False)
    with Trace(lm, site, retain=True) as tr:
        tr.set_mask(enc.attention_mask)
        forward(lm.model, enc.input_ids, enc.attention_mask)  # type: ignore[attr-defined]
    m = enc.attention_mask[..., None].float()
    return (tr[site].float() * m).sum(1) / m.sum(1)


def _condition(
    lm: object, site: str = "resid_post.0", **kw: object
) -> tuple[Condition, torch.Tensor]:
    """A condition that fires on the prompts with 'apple' (threshold between the groups)."""
    means = _prompt_means(lm, site, PROMPTS)
    c = means[[0, 2]].mean(0) - means[[1, 3]].mean(0)
    probe = Condition(c, site, 0.0, ">", "cos")
    s = probe.scores(means)
    thr = float((s[[0, 2]].min() + s[[1, 3]].max()) / 2)
    assert s[[0, 2]].min() > s[[1, 3]].max()
    return Condition(c, site, thr, ">", "cos", **kw), s  # type: ignore[arg-type]


def test_scores_follow_their_definitions() -> None:
    c = Condition(torch.tensor([3.0, 4.0]), "resid_post.0", 0.5)
    h = torch.tensor([[1.0, 0.0], [-4.0, 3.0], [0.0, -2.0]])
    u = torch.tensor([0.6, 0.8])
    cos = (h @ u) / h.norm(dim=-1)
    torch.testing.assert_close(c.scores(h), cos.abs())  # |h.u|/|h| = cos(h, proj_c h)
    torch.testing.assert_close(Condition(c.direction, c.site, 0.0, score="cos").scores(h), cos)
    assert c.fires(torch.tensor([0.6, 0.4])).tolist() == [True, False]
    assert Condition(c.direction, c.site, 0.5, "<").fires(torch.tensor([0.6, 0.4])).tolist() == [
        False,
        True,
    ]


def test_latched_gate_steers_only_the_samples_whose_condition_fires() -> None:
    lm = get_model("tiny:llama")
    cond, _ = _condition(lm)
    v = _vec(lm)
    plain = generate(lm, PROMPTS, None, chat=False, max_new_tokens=6)
    always = generate(lm, PROMPTS, Steering(lm, v, coef=6.0), chat=False, max_new_tokens=6)
    st = Steering(lm, v, coef=6.0, condition=cond)
    gated, fired = generate(lm, PROMPTS, st, chat=False, max_new_tokens=6, return_decisions=True)
    assert fired == [True, False, True, False]
    assert always[0] != plain[0] and always[2] != plain[2]
    for i, f in enumerate(fired):
        assert gated[i] == (always[i] if f else plain[i])
    # ~cond flips every decision
    _, flipped = generate(
        lm,
        PROMPTS,
        Steering(lm, v, coef=6.0, condition=~cond),
        chat=False,
        max_new_tokens=2,
        return_decisions=True,
    )
    assert flipped == [False, True, False, True]


def test_condition_after_the_steered_layer_needs_a_pre_pass() -> None:
    lm = get_model("tiny:llama")
    cond, _ = _condition(lm, site="resid_post.1")
    v = _vec(lm, layers=(0,))
    st = Steering(lm, v, coef=6.0, condition=cond)
    assert st.needs_prepare
    enc = encode_prompts(lm, PROMPTS, chat=False)
    with st, pytest.raises(ActscopeError, match="has not been evaluated"):
        forward(lm.model, enc.input_ids, enc.attention_mask)
    _, fired = generate(lm, PROMPTS, st, chat=False, max_new_tokens=3, return_decisions=True)
    assert fired == [True, False, True, False]
    with pytest.raises(ActscopeError, match="per-token condition"):
        Steering(lm, v, condition=cond, per_token=True)


def test_per_token_gate_uses_the_running_mean_of_every_token_so_far() -> None:
    lm = get_model("tiny:llama")
    cond, _ = _condition(lm, per_token=True)
    v = _vec(lm)
    enc = encode_prompts(lm, PROMPTS, chat=False)
    with Steering(lm, v, coef=1.0, condition=cond) as st:
        forward(lm.model, enc.input_ids, enc.attention_mask)
        gate = st._leaf[id(cond)].gate
        score = st._leaf[id(cond)].score
    with Trace(lm, "resid_post.0", retain=True) as tr:
        forward(lm.model, enc.input_ids, enc.attention_mask)
    h, m = tr["resid_post.0"].float(), enc.attention_mask.float()[..., None]
    running = (h * m).cumsum(1) / m.cumsum(1).clamp_min(1)
    expected = cond.scores(running)
    real = enc.attention_mask.bool()
    torch.testing.assert_close(score[real], expected[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(gate[real], cond.fires(expected)[real])
    # and generation with a per-token gate is the same with and without the KV cache
    st = Steering(lm, v, coef=3.0, condition=cond)
    a = generate(lm, PROMPTS, st, chat=False, max_new_tokens=5, use_cache=True)
    b = generate(lm, PROMPTS, st, chat=False, max_new_tokens=5, use_cache=False)
    assert a == b


def test_rules_combine_conditions() -> None:
    lm = get_model("tiny:llama")
    apple, _ = _condition(lm)
    nothing = Condition(apple.direction, apple.site, 10.0, ">", "cos")  # never fires
    v = _vec(lm)
    for rule, expected in (
        (any_of(apple, nothing), [True, False, True, False]),
        (all_of(apple, nothing), [False] * 4),
        (apple | ~nothing, [True] * 4),
        (apple & ~nothing, [True, False, True, False]),
    ):
        _, fired = generate(
            lm,
            PROMPTS,
            Steering(lm, v, condition=rule),
            chat=False,
            max_new_tokens=2,
            return_decisions=True,
        )
        assert fired == expected


def test_condition_save_and_load(tmp_path: Path) -> None:
    c = Condition(
        torch.arange(4.0) + 1,
        "resid_post.3",
        0.25,
        "<",
        "cos",
        7,
        2,
        True,
        "food",
        {"test_f1": 0.9},
    )
    back = Condition.load(c.save(tmp_path / "c.safetensors", model="m"))
    assert (back.site, back.threshold, back.comparator, back.score) == (
        "resid_post.3",
        0.25,
        "<",
        "cos",
    )
    assert (back.prefix_tokens, back.suffix_tokens, back.per_token, back.name) == (
        7,
        2,
        True,
        "food",
    )
    assert back.metrics == {"test_f1": 0.9}
    torch.testing.assert_close(back.direction, c.direction)


def test_metric_helpers_match_sklearn() -> None:
    from sklearn.metrics import f1_score as sk_f1
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.normal(size=50) + labels
    scores[:5] = scores[5:10]  # ties
    pred = scores > 0.5
    assert f1_score(pred, labels)[0] == pytest.approx(sk_f1(labels, pred))
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_search_finds_a_separating_condition_on_held_out_prompts() -> None:
    lm = get_model("tiny:llama")
    food = [
        "apple pie",
        "apple juice",
        "baked apple",
        "apple tart",
        "green apple",
        "apple cake",
        "apple jam",
        "sweet apple",
        "red apple",
        "apple crumble",
    ]
    other = [
        "zzzz qqq",
        "qqq zzzz",
        "xxyyzz",
        "zzqqxx",
        "qzqzqz",
        "yyy xxx",
        "zyx zyx",
        "xqz xqz",
        "qqzzxy",
        "yxqzzy",
    ]
    ds = ContrastDataset.from_records(
        [{"text": t, "label": 1} for t in food] + [{"text": t, "label": 0} for t in other],
        name="apples",
        fmt="raw",
    )
    res = search_condition(lm, ds, layers="all", scores=("cos", "proj_cos"), train_fraction=0.5)
    assert set(res.table.columns) >= {
        "layer",
        "comparator",
        "threshold",
        "train_f1",
        "cv_f1",
        "test_f1",
        "test_auc",
    }
    assert len(res.table) == 2 * 2 * 2  # layers x scores x comparators
    assert res.test["train_f1"] == 1.0
    assert res.test["test_f1"] >= 0.9 and res.test["test_auc"] >= 0.95
    assert res.condition.metrics["test_f1"] == res.test["test_f1"]
    _, fired = generate(
        lm,
        ["apple pie", "zzzz qqq"],
        Steering(lm, _vec(lm), condition=res.condition),
        chat=False,
        max_new_tokens=1,
        return_decisions=True,
    )
    assert fired == [True, False]
