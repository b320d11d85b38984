"""Attribution patching against finite differences on a tiny model, and its agreement table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from actscope.analyses.explain.attribution import agreement, attribute_pairs, values_and_grads
from actscope.analyses.explain.pairs import PromptPair, TokenizedPair, tokenize_pairs
from actscope.analyses.explain.patching import UNIT_KEY, aggregate, patch_pairs
from actscope.analyses.explain.units import PatchUnit
from actscope.capture import Trace, forward
from actscope.models import load_model

PAIR = PromptPair(
    "When Anna and Lucy went, Lucy gave it to ",
    "When Anna and Lucy went, Anna gave it to ",
    "A",
    "L",
)


@pytest.fixture(scope="module")
def lm64() -> object:
    """A tiny GPT-2 in float64 end to end (Llama's RMSNorm would compute in float32), so
    central differences are accurate to ~1e-8."""
    return load_model("tiny:gpt2", dtype=torch.float64, device="cpu")


def _ld_with_offset(lm: object, tp: TokenizedPair, site: str, offset: torch.Tensor) -> float:
    """LD of the corrupt prompt with ``offset`` (seq, width) added at ``site``."""
    with torch.inference_mode(), Trace(lm, edits={site: lambda v, m: v + offset}):
        logits = forward(lm.model, torch.tensor([tp.corrupt_ids])).logits[0, -1]  # type: ignore[attr-defined]
    return float(logits[tp.answer_id] - logits[tp.wrong_id])


@pytest.mark.parametrize(
    "unit",
    [
        PatchUnit("resid_pre.1", "resid_pre", 1, -1),
        PatchUnit("attn_out.0", "attn_out", 0, None),
        PatchUnit("mlp_act.1", "mlp_act", 1, -1),
        PatchUnit("o_in.1", "o_in", 1, None, 3, 16),
    ],
)
def test_atp_equals_central_finite_difference(lm64: object, unit: PatchUnit) -> None:
    tp = tokenize_pairs(lm64.tokenizer, [PAIR])[0]  # type: ignore[attr-defined]
    pos = None if unit.position is None else tp.length + unit.position
    unit = PatchUnit(unit.site, unit.kind, unit.layer, pos, unit.head, unit.head_dim)
    df = attribute_pairs(lm64, [tp], lambda _: [unit])
    src, _, _ = values_and_grads(lm64, tp.clean_ids, [unit.site], tp.answer_id, tp.wrong_id)
    base, _, ld0 = values_and_grads(lm64, tp.corrupt_ids, [unit.site], tp.answer_id, tp.wrong_id)
    direction = (src[unit.site] - base[unit.site]) * unit.mask(*base[unit.site].shape)

    eps = 1e-4
    up = _ld_with_offset(lm64, tp, unit.site, eps * direction)
    down = _ld_with_offset(lm64, tp, unit.site, -eps * direction)
    fd = (up - down) / (2 * eps)
    assert abs(fd) > 1e-6, "the chosen unit should move the metric"
    assert df["delta"].iloc[0] == pytest.approx(fd, rel=1e-6, abs=1e-10)
    assert df["ld"].iloc[0] == pytest.approx(ld0 + fd, rel=1e-5)
    assert bool(df["changed"].iloc[0])


def test_grad_pass_leaves_model_clean(lm64: object) -> None:
    model = lm64.model  # type: ignore[attr-defined]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    tp = tokenize_pairs(lm64.tokenizer, [PAIR])[0]  # type: ignore[attr-defined]
    with torch.inference_mode():  # callers may hold inference mode; the grad pass still works
        _, grads, _ = values_and_grads(
            lm64, tp.corrupt_ids, ["resid_pre.0"], tp.answer_id, tp.wrong_id
        )
    assert grads["resid_pre.0"].abs().sum() > 0
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert after == hooks
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())


def test_unchanged_units_are_noops_and_left_out_of_agreement(lm64: object) -> None:
    """Positions before the first corrupted token: both methods give the base LD exactly."""
    tp = tokenize_pairs(lm64.tokenizer, [PAIR])[0]  # type: ignore[attr-defined]
    units = [
        PatchUnit(f"resid_pre.{layer}", "resid_pre", layer, p)
        for layer in (0, 1)
        for p in range(tp.length)
    ]
    ex = patch_pairs(lm64, [tp], lambda _: units)
    at = attribute_pairs(lm64, [tp], lambda _: units)
    same = ~at["changed"].to_numpy(bool)
    assert 0 < same.sum() < len(units)
    assert (at["delta"].to_numpy()[same] == 0).all()
    np.testing.assert_allclose(ex["ld"].to_numpy()[same], ex["ld_corrupt"].to_numpy()[same])
    agree = agreement(aggregate(ex), aggregate(at))
    assert agree.set_index("kind").loc["all", "n_units"] == int((~same).sum())


def test_agreement_of_identical_tables_is_perfect() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "kind": ["a"] * 20 + ["b"] * 20,
            "layer": np.arange(40),
            "pos_from_end": -1,
            "head": -1,
            "ld_norm": rng.normal(size=40),
        }
    )
    agree = agreement(df, df, top_k=5)
    np.testing.assert_allclose(agree["spearman"], 1.0)
    assert (agree["top5_overlap"] == 1.0).all()
    flipped = df.assign(ld_norm=-df["ld_norm"])
    assert agreement(df, flipped)["spearman"].iloc[0] == pytest.approx(-1.0)
    assert set(UNIT_KEY) <= set(df.columns)
