"""The Sparsifier against a direct computation of each rule, and its bookkeeping."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.capture import Trace, forward
from actscope.errors import ActscopeError
from actscope.interventions.sparsify import Sparsifier, UnitRule, prefill_positions
from actscope.interventions.sparsify_plan import SparsityCalibration, SparsityPlan
from actscope.interventions.sparsify_rules import make_scorer, rule_units
from actscope.kernels import swapped_modules


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _ids(b: int = 2, t: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def _thresholds(lm, rule: str, level: float, up_sq=None) -> Sparsifier:
    """Thresholds at quantile ``level`` of each unit's own score on the test batch."""
    units = rule_units(lm, rule)
    sources = {u.site: (f"mlp_gate.{u.layer}" if u.score == "chess" else u.site) for u in units}
    with torch.inference_mode(), Trace(lm, sorted(set(sources.values())), retain=True) as tr:
        forward(lm.model, _ids())
    rules = []
    for u in units:
        scorer = make_scorer(lm, u, up_sq)
        t = float(torch.quantile(scorer(tr[sources[u.site]]).flatten(), level))
        rules.append(UnitRule(u, scorer, threshold=t))
    return Sparsifier(lm, rules)


@pytest.mark.parametrize("rule", ["teal", "wina", "chess"])
def test_edited_inputs_equal_the_direct_computation(rule: str) -> None:
    lm = get_model("tiny:llama")
    up_sq = {0: torch.rand(128) + 0.5, 1: torch.rand(128) + 0.5}
    sp = _thresholds(lm, rule, 0.4, up_sq)
    units = rule_units(lm, rule)
    layer0 = lm.model.model.layers[0]
    with (
        torch.inference_mode(),
        sp,
        Trace(
            lm,
            ["attn_in.0", "mlp_gate.0", "up_out.0", "down_in.0", "q_in.0", "o_in.0"],
            retain=True,
        ) as tr,
    ):
        forward(lm.model, _ids())
    # q input: dense attention input, then the rule's own mask
    x = tr["attn_in.0"]
    t_q = sp.rules["q_in.0"].threshold
    if rule == "wina":
        expect_q = x * (x.abs() * layer0.self_attn.q_proj.weight.norm(dim=0) > t_q)
    else:
        expect_q = x * (x.abs() > t_q)
    torch.testing.assert_close(tr["q_in.0"], expect_q)
    # down input: act(gate) * up, masked by the rule
    gate, up = tr["mlp_gate.0"], tr["up_out.0"]
    a = torch.nn.functional.silu(gate) * up
    t_d = sp.rules["down_in.0"].threshold
    if rule == "chess":
        keep = torch.nn.functional.silu(gate) ** 2 * up_sq[0] > t_d
    elif rule == "wina":
        keep = a.abs() * layer0.mlp.down_proj.weight.norm(dim=0) > t_d
    else:
        keep = a.abs() > t_d
    torch.testing.assert_close(tr["down_in.0"], a * keep)
    assert len(units) == len(sp.rules)


def test_topk_keeps_exactly_k_entries_per_token() -> None:
    lm = get_model("tiny:llama")
    sp = Sparsifier.exact_topk(lm, "teal", 0.3)
    with torch.inference_mode(), sp, Trace(lm, ["q_in.1", "down_in.1"], retain=True) as tr:
        forward(lm.model, _ids())
    assert ((tr["q_in.1"] != 0).sum(-1) == 64 - round(0.3 * 64)).all()
    assert ((tr["down_in.1"] != 0).sum(-1) == 128 - round(0.3 * 128)).all()
    real = sp.realised()
    assert real["q_in.1"] == pytest.approx(0.3, abs=1 / 64)
    assert sp.overall() == pytest.approx(0.3, abs=0.01)
    assert sp.weight_sparsity() == pytest.approx(0.3, abs=0.01)


def test_prefill_fraction_sparsifies_only_the_last_tokens() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    sel = prefill_positions(mask, 0.5)
    assert sel.tolist() == [
        [False] * 4 + [True] * 4,
        [False] * 5 + [True] * 3,
    ]  # 5 real tokens: floor(2.5 + 0.5) = 3
    lm = get_model("tiny:llama")
    sp = Sparsifier.exact_topk(lm, "teal", 0.5, prefill_fraction=0.25)
    ids = _ids(1, 8)
    with torch.inference_mode():
        dense = forward(lm.model, ids).logits
        with sp, Trace(lm, ["q_in.0"], retain=True) as tr:
            sp.set_mask(torch.ones_like(ids))
            out = forward(lm.model, ids).logits
    zeros = (tr["q_in.0"][0] == 0).sum(-1)
    assert zeros[:6].tolist() == [0] * 6 and zeros[6:].tolist() == [32, 32]
    torch.testing.assert_close(out[:, :6], dense[:, :6])  # causal: early tokens untouched
    assert sp.realised()["q_in.0"] == pytest.approx(0.5)


def test_hooks_are_owned_and_removed() -> None:
    lm = get_model("tiny:llama")
    before = _hooks(lm.model)
    sp = Sparsifier.exact_topk(
        lm, "chess", 0.5, chess_up_sq={0: torch.ones(128), 1: torch.ones(128)}
    )
    with pytest.raises(RuntimeError, match="inside"), sp:
        assert _hooks(lm.model) == before + sp.n_hooks
        raise RuntimeError("inside")
    assert _hooks(lm.model) == before
    with sp, pytest.raises(ActscopeError, match="already attached"):
        sp.attach()
    assert _hooks(lm.model) == before


def test_from_plan_and_bad_plans() -> None:
    lm = get_model("tiny:llama")
    sites = [u.site for u in rule_units(lm, "teal")]
    plan = SparsityPlan(
        "teal", "uniform", 0.5, dict.fromkeys(sites, 0.5), dict.fromkeys(sites, 0.1)
    )
    sp = Sparsifier.from_plan(lm, plan)
    assert sp.rules["q_in.0"].threshold == 0.1 and sp.description["target"] == 0.5
    bad = SparsityPlan("teal", "uniform", 0.5, {"mlp_in.0": 0.5}, {"mlp_in.0": 0.1})
    with pytest.raises(ActscopeError, match="no teal unit"):
        Sparsifier.from_plan(lm, bad)
    chess_sites = [u.site for u in rule_units(lm, "chess")]
    chess = SparsityPlan(
        "chess", "uniform", 0.5, dict.fromkeys(chess_sites, 0.5), dict.fromkeys(chess_sites, 0.1)
    )
    with pytest.raises(ActscopeError, match="E\\[up\\^2\\]"):
        Sparsifier.from_plan(lm, chess, SparsityCalibration({}, {}))
    with pytest.raises(ActscopeError, match="prefill_fraction"):
        Sparsifier.exact_topk(lm, "teal", 0.5, prefill_fraction=1.5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_decode_modules_match_the_hooks_on_a_prefill(family: str) -> None:
    lm = get_model(f"tiny:{family}")
    sp = Sparsifier.exact_topk(lm, "wina", 0.4)
    ids = _ids(1, 9)
    with torch.inference_mode():
        with sp:
            masked = forward(lm.model, ids).logits
        with swapped_modules(lm.model, sp.decode_modules("gather")):
            fast = forward(lm.model, ids).logits
    torch.testing.assert_close(fast, masked, rtol=1e-5, atol=1e-5)
