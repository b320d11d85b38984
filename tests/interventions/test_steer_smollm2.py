"""Steering on the real SmolLM2-135M-Instruct (slow: loads the embedded model)."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.analyses.steer_ab import Scorer
from actscope.interventions.steering import (
    Steering,
    generate,
    instruction_window,
    load_dataset,
    train_vector,
)
from actscope.models import LoadedModel

pytestmark = pytest.mark.slow


def test_steered_generation_with_cache_equals_without_on_smollm2() -> None:
    lm = get_model("smollm2-135m", "fp32")
    g = torch.Generator().manual_seed(0)
    vec = {5: torch.randn(576, generator=g) * 4, 12: torch.randn(576, generator=g) * 8}
    prompts = ["Tell me about your weekend.", "What is the capital of France?", "Hi!"]
    st = Steering(lm, vec, coef=[1.0, 0.0, 2.0], positions="gen")
    with_cache = generate(lm, prompts, st, max_new_tokens=8, use_cache=True)
    without = generate(lm, prompts, st, max_new_tokens=8, use_cache=False)
    assert with_cache == without
    assert generate(lm, prompts[1:2], None, max_new_tokens=8) == [with_cache[1]]  # coef 0 row


def test_sentiment_vector_moves_the_answer_score_monotonically(smollm2: LoadedModel) -> None:
    train, _ = load_dataset("sentiment-pairs").split(0.15, seed=0)
    vec = train_vector(smollm2, train, layers=[12], n_bootstrap=0)
    assert vec.stats[12]["pair_agreement"] == 1.0
    items = load_dataset("sentiment-ab").split(0.5, seed=0)[1].ab_items()[:8]
    win = instruction_window(smollm2)
    scorer = Scorer(smollm2, items, "answer", positions=win, batch_size=8)
    scores = [
        float(
            scorer(None if m == 0 else Steering(smollm2, vec, coef=m, positions=win)).score.mean()
        )
        for m in (-2.0, 0.0, 2.0)
    ]
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] - scores[0] > 0.25


def test_fp32_extraction_does_not_depend_on_padding_or_batching() -> None:
    """``steer train`` extracts in fp32 (its --dtype default): left vs right padding and batched
    vs one-by-one agree to ~1e-6 relative L2 (bf16 moves the vector by several %)."""
    lm = get_model("smollm2-135m", "fp32")
    train = load_dataset("sentiment-ab").split(0.2, seed=0)[0]  # 16 items, 32 texts
    layers = [3, 15]

    def vec(side: str, batch: int) -> dict[int, torch.Tensor]:
        v = train_vector(
            lm, train, layers=layers, padding_side=side, batch_size=batch, n_bootstrap=0
        )
        return {x: v[x].double() for x in layers}

    right = vec("right", 16)
    for other in (vec("left", 16), vec("right", 1)):
        for x in layers:
            assert float((other[x] - right[x]).norm() / right[x].norm()) < 1e-4, x
