"""SmoothQuant folding: factors by hand, exact invariance on tiny models, restoration."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.capture.runner import forward
from actscope.interventions.quant import SmoothingError, folds, smoothed, smoothing_factors
from actscope.interventions.quant.apply import linear_modules


def test_factors_by_hand() -> None:
    a = torch.tensor([4.0, 1.0, 0.0])
    w1 = torch.tensor([[1.0, -2.0, 1.0], [0.5, 4.0, 3.0]])  # column max |W|: 1, 4, 3
    s = smoothing_factors(a, [w1], alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 0.5, 1.0]))  # zero activation: s = 1
    s = smoothing_factors(a[:2], [w1[:, :2], torch.tensor([[8.0, 0.0]])], alpha=0.75)
    # weight max over both Linear layers: 8, 4
    torch.testing.assert_close(s, torch.tensor([4.0**0.75 / 8.0**0.25, 1.0 / 4.0**0.25]))


def test_factors_grouped_over_query_heads() -> None:
    # 4 query heads, 2 kv heads, head_dim 1: o_proj input channel h reads v channel h // 2
    a = torch.tensor([1.0, 3.0, 2.0, 5.0])
    w = torch.tensor([[1.0, 1.0, 4.0, 1.0]])
    s = smoothing_factors(a, [w], alpha=0.5, heads=(4, 2, 1))
    torch.testing.assert_close(s, torch.tensor([3.0**0.5, (5.0 / 4.0) ** 0.5]))


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3"])
def test_folding_keeps_the_function_and_restores_weights(family: str) -> None:
    lm = get_model(f"tiny:{family}", "fp32")
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    scales = {
        name: torch.rand(m.weight.shape[1], generator=g) * 10 + 0.1
        for name, m in linear_modules(lm).items()
    }
    params = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with torch.inference_mode():
        ref = forward(lm.model, ids).logits
        with smoothed(lm, scales, alpha=0.6) as factors:
            changed = [n for n, p in lm.model.named_parameters() if not torch.equal(p, params[n])]
            got = forward(lm.model, ids).logits
    assert len(changed) >= 4 * 2 and len(factors) == 7 * 2
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, params[n]), n


def test_gemma_norm_is_folded_into_one_plus_weight() -> None:
    lm = get_model("tiny:gemma3", "fp32")
    norm = lm.model.model.layers[0].input_layernorm
    w0 = norm.weight.detach().clone()
    scales = {name: torch.ones(m.weight.shape[1]) * 4.0 for name, m in linear_modules(lm).items()}
    with smoothed(lm, scales, alpha=1.0) as factors:
        s = factors["model.layers.0.self_attn.q_proj"]
        torch.testing.assert_close(norm.weight.detach(), (1.0 + w0) / s - 1.0)


def test_unsupported_family_and_missing_scales() -> None:
    with pytest.raises(SmoothingError, match="not implemented"):
        folds(get_model("tiny:gpt2", "fp32"))
    lm = get_model("tiny:llama", "fp32")
    with pytest.raises(SmoothingError, match="no activation scales"), smoothed(lm, {}, 0.5):
        pass
    with pytest.raises(SmoothingError, match="alpha"), smoothed(lm, {}, 1.5):
        pass
