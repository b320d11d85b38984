"""Decode benchmark: the sparse decode path equals masked dense; the table is well formed."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.analyses.sparsity import decode_benchmark, decode_steps
from actscope.interventions.sparsify import Sparsifier

PROMPT = torch.tensor([5, 17, 99, 3, 42, 7, 250, 11])


def _configs(lm, rules=("teal", "wina", "chess"), s: float = 0.5):
    ups = {
        layer: torch.rand(128, generator=torch.Generator().manual_seed(layer)) + 0.1
        for layer in range(2)
    }
    return {
        f"{r}@{s}": (Sparsifier.exact_topk(lm, r, s, chess_up_sq=ups, record=False), s)
        for r in rules
    }


@pytest.mark.parametrize("kernel", ["bag", "gather"])
def test_sparse_decode_matches_masked_dense(kernel: str) -> None:
    lm = get_model("tiny:llama")
    res = decode_benchmark(lm, _configs(lm), prompt=PROMPT, new_tokens=6, repeats=1, kernel=kernel)
    num = res.numerics
    assert len(num) == 3 and (num.steps == 6).all()
    assert (num.one_step_max_abs_diff < 1e-5).all() and (num.one_step_argmax_agreement == 1).all()
    assert (num.forced_max_abs_diff < 1e-5).all() and (num.forced_argmax_agreement == 1.0).all()
    t = res.table.set_index("config")
    assert t.loc["dense", "speedup"] == 1.0
    assert t.loc["teal@0.5", "decode_weight_sparsity"] == pytest.approx(0.5)
    assert t.loc["chess@0.5", "decode_weight_sparsity"] == pytest.approx(
        0.5 * (2 * 64 * 64 + 2 * 64 * 128) / (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    )
    assert t.loc["teal@0.5", "ideal_ms"] == pytest.approx(t.loc["dense", "ms_per_token"] * 0.5)
    assert (t.dense_linear_ms > 0).all() and (t.cpu_ms_per_token > 0).all()


def test_decode_steps_teacher_forcing() -> None:
    lm = get_model("tiny:qwen3")
    with torch.inference_mode():
        free = decode_steps(lm.model, PROMPT.unsqueeze(0), 4, keep_logits=True)
        forced = decode_steps(lm.model, PROMPT.unsqueeze(0), 4, free.tokens, keep_logits=True)
    assert forced.tokens == free.tokens and len(free.wall) == len(free.cpu) == 4
    for a, b in zip(free.logits, forced.logits, strict=True):
        torch.testing.assert_close(a, b)
    assert free.tokens[1:] == [int(x.argmax()) for x in free.logits]
    assert all(c > 0 for c in free.cpu)


@pytest.mark.slow
def test_smollm2_sparse_decode_matches_masked_dense() -> None:
    """fp32 SmolLM2, TEAL top-k at 0.5, bag kernel: from the same KV cache, one decode step of
    the sparse path reproduces the masked-dense logits (median max |diff| < 1e-3, logits up
    to ~35) with the same argmax on >= 90 % of the steps. (In bf16 the kernels round like the
    dense product, but one-ulp differences flip entries that sit at a threshold: see
    docs/sparsity.md.)"""
    lm = get_model("smollm2-135m", "fp32")
    cfg = {"teal@0.5": (Sparsifier.exact_topk(lm, "teal", 0.5, record=False), 0.5)}
    ids = torch.tensor(lm.tokenizer("The capital of France is")["input_ids"])
    res = decode_benchmark(lm, cfg, prompt=ids, new_tokens=10, repeats=1, kernel="bag")
    row = res.numerics.iloc[0]
    assert row.one_step_median_abs_diff < 1e-3
    assert row.one_step_argmax_agreement >= 0.9
