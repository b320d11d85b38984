"""Units, scores and weight accounting of the TEAL, WINA and CHESS rules."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.errors import ActscopeError
from actscope.interventions.sparsify_rules import (
    Scorer,
    block_weights,
    column_norms,
    keep_threshold,
    keep_topk,
    linear_sites,
    make_scorer,
    rule_units,
    source_site,
)


def test_teal_and_wina_cover_every_linear_input() -> None:
    lm = get_model("tiny:llama")
    sites = linear_sites(lm)
    assert len(sites) == 2 * 7
    for rule, score in (("teal", "abs"), ("wina", "wina")):
        units = rule_units(lm, rule)
        assert [u.site for u in units] == list(sites)
        assert {u.score for u in units} == {score}
    blocks = {u.site.split(".")[0]: u.block for u in rule_units(lm, "teal")}
    assert blocks == {
        "q_in": "attn",
        "k_in": "attn",
        "v_in": "attn",
        "o_in": "attn",
        "gate_in": "mlp",
        "up_in": "mlp",
        "down_in": "mlp",
    }


def test_chess_units_and_their_weights() -> None:
    lm = get_model("tiny:llama")  # hidden 64, intermediate 128, 4 heads, 2 kv heads
    units = rule_units(lm, "chess")
    assert [u.site for u in units[:3]] == ["q_in.0", "o_in.0", "down_in.0"]
    down = units[2]
    assert down.score == "chess" and source_site(down) == "mlp_gate.0"
    assert down.n_weights == 2 * 64 * 128  # up rows + down columns
    totals = block_weights(lm)
    assert totals[(0, "attn")] == 64 * 64 * 2 + 64 * 32 * 2
    assert totals[(0, "mlp")] == 3 * 64 * 128


def test_chess_needs_a_gated_mlp() -> None:
    with pytest.raises(ActscopeError, match="gated MLP"):
        rule_units(get_model("tiny:gpt2"), "chess")
    with pytest.raises(ActscopeError, match="unknown sparsity rule 'teel'.*did you mean"):
        rule_units(get_model("tiny:llama"), "teel")


def test_scores_against_direct_formulas() -> None:
    lm = get_model("tiny:llama")
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64)
    q = make_scorer(lm, rule_units(lm, "teal")[0], None)
    torch.testing.assert_close(q(x), x.abs())
    wina_q = make_scorer(lm, rule_units(lm, "wina")[0], None)
    w = lm.model.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(wina_q(x), x.abs() * torch.sqrt((w.float() ** 2).sum(dim=0)))
    torch.testing.assert_close(
        column_norms(lm.model.model.layers[0].self_attn.q_proj), w.float().norm(dim=0)
    )
    up_sq = {0: torch.rand(128) + 0.5, 1: torch.rand(128) + 0.5}
    chess = make_scorer(lm, rule_units(lm, "chess")[2], up_sq)
    g = torch.randn(2, 4, 128)
    torch.testing.assert_close(chess(g), torch.nn.functional.silu(g) ** 2 * up_sq[0])
    with pytest.raises(ActscopeError, match="E\\[up\\^2\\]"):
        make_scorer(lm, rule_units(lm, "chess")[2], None)
    with pytest.raises(ActscopeError, match="unknown score"):
        Scorer("l2")


def test_keep_rules() -> None:
    s = torch.tensor([[0.1, 0.5, 0.5, 0.9, 0.0], [3.0, 2.0, 1.0, 0.0, 4.0]])
    assert keep_threshold(s, 0.5).tolist() == [
        [False, False, False, True, False],
        [True, True, True, False, True],
    ]
    k = keep_topk(s, 0.6)  # keep 5 - round(3) = 2 per row
    assert k.sum(dim=1).tolist() == [2, 2]
    assert k[1].tolist() == [True, False, False, False, True]
    assert keep_topk(s, 1.0).sum() == 0 and keep_topk(s, 0.0).all()
