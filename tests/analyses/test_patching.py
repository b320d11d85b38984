"""Exact activation patching against a manual two-run computation, batching, normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tests._models import get_model

from actscope.analyses.explain.pairs import PromptPair, TokenizedPair, tokenize_pairs
from actscope.analyses.explain.patching import aggregate, patch_pairs
from actscope.analyses.explain.units import PatchUnit, head_units, position_units
from actscope.capture import Trace, forward, sitemap_of
from actscope.errors import ActscopeError, DataError

PAIR = PromptPair(
    "When Anna and Lucy went, Lucy gave it to ",
    "When Anna and Lucy went, Anna gave it to ",
    "A",
    "L",
)


def _pair(lm: object) -> TokenizedPair:
    return tokenize_pairs(lm.tokenizer, [PAIR])[0]  # type: ignore[attr-defined]


def _manual_ld(lm: object, tp: TokenizedPair, unit: PatchUnit) -> float:
    """Two separate runs: cache the clean value, then run corrupt with it pasted in."""
    model = lm.model  # type: ignore[attr-defined]
    clean = torch.tensor([tp.clean_ids])
    corrupt = torch.tensor([tp.corrupt_ids])
    with torch.inference_mode(), Trace(lm, [unit.site], retain=True) as tr:
        forward(model, clean)
    src = tr[unit.site].clone()

    def paste(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = value.clone()
        rows = slice(None) if unit.position is None else unit.position
        if unit.head is None:
            out[:, rows] = src[:, rows]
        else:
            d = int(unit.head_dim or 0)
            cols = slice(unit.head * d, (unit.head + 1) * d)
            out[:, rows, cols] = src[:, rows, cols]
        return out

    with torch.inference_mode(), Trace(lm, edits={unit.site: paste}):
        logits = forward(model, corrupt).logits[0, -1].float()
    return float(logits[tp.answer_id] - logits[tp.wrong_id])


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_patching_matches_manual_two_runs(reuse_prefix: bool) -> None:
    lm = get_model("tiny:llama")
    tp = _pair(lm)
    last = tp.length - 1
    units = [
        PatchUnit("resid_pre.1", "resid_pre", 1, last),
        PatchUnit("attn_out.0", "attn_out", 0, last - 14),
        PatchUnit("mlp_out.1", "mlp_out", 1, last),
        PatchUnit("o_in.1", "o_in", 1, None, 2, 16),
        PatchUnit("o_in.0", "o_in", 0, last, 1, 16),
        PatchUnit("resid_pre.1", "resid_pre", 1, 3),  # before the first difference: a no-op
    ]
    df = patch_pairs(lm, [tp], lambda _: units, batch_size=4, reuse_prefix=reuse_prefix)
    manual = [_manual_ld(lm, tp, u) for u in units]
    np.testing.assert_allclose(df["ld"].to_numpy(), manual, atol=1e-5)
    assert df["ld"].iloc[-1] == pytest.approx(df["ld_corrupt"].iloc[0], abs=1e-6)
    assert df["ld"].std() > 1e-4, "the chosen units should not all leave the metric unchanged"


def test_whole_site_patch_hits_the_baselines() -> None:
    """Patching the entire embedding output reproduces the source run exactly."""
    lm = get_model("tiny:llama")
    tp = _pair(lm)
    whole = [PatchUnit("embed", "embed", -1, None)]
    den = patch_pairs(lm, [tp], lambda _: whole, direction="denoise")
    noi = patch_pairs(lm, [tp], lambda _: whole, direction="noise")
    assert den["ld_norm"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert noi["ld_norm"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    assert den["ld"].iloc[0] == pytest.approx(den["ld_clean"].iloc[0], abs=1e-5)
    assert 0 < den["prob"].iloc[0] < 1


def test_batch_size_does_not_change_results() -> None:
    lm = get_model("tiny:llama")
    tp = _pair(lm)
    sm = sitemap_of(lm)
    sites = [sm.get("resid_pre.0"), sm.get("mlp_out.1")]

    def units(p: TokenizedPair) -> list[PatchUnit]:
        return position_units(sites, p.length) + head_units(sm, 64)

    a = patch_pairs(lm, [tp], units, batch_size=1)
    b = patch_pairs(lm, [tp], units, batch_size=97)
    np.testing.assert_allclose(a["ld"], b["ld"], atol=1e-5)
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "gemma3", "qwen2_moe", "gpt_neox"])
def test_prefix_reuse_matches_full_runs(family: str) -> None:
    lm = get_model(f"tiny:{family}")
    tp = _pair(lm)
    sm = sitemap_of(lm)
    sites = sm.resolve(["resid_pre.1", "attn_out.0"])

    def units(p: TokenizedPair) -> list[PatchUnit]:
        return position_units(sites, p.length) + head_units(sm, 64)

    a = patch_pairs(lm, [tp], units, reuse_prefix=True)
    b = patch_pairs(lm, [tp], units, reuse_prefix=False)
    np.testing.assert_allclose(a["ld"], b["ld"], atol=1e-5)


def test_pairs_must_tokenize_to_equal_lengths() -> None:
    lm = get_model("tiny:llama")
    with pytest.raises(DataError, match="equal lengths"):
        tokenize_pairs(lm.tokenizer, [PromptPair("ab c", "ab cd", "x", "y")])
    with pytest.raises(DataError, match="same token"):
        tokenize_pairs(lm.tokenizer, [PromptPair("ab c", "ab d", " x", " y")])


def test_identical_prompts_raise() -> None:
    lm = get_model("tiny:llama")
    tp = tokenize_pairs(lm.tokenizer, [PromptPair("ab c", "ab c", "x", "y")])[0]
    with pytest.raises(ActscopeError, match="identical"):
        patch_pairs(lm, [tp], lambda p: [PatchUnit("resid_pre.0", "resid_pre", 0, 0)])


def test_aggregate_uses_pair_averaged_normalisation() -> None:
    rows = []
    for pair, (ld, clean, corrupt) in enumerate([(1.0, 2.0, 0.0), (3.0, 4.0, 2.0)]):
        rows.append(
            {
                "pair": pair,
                "kind": "resid_pre",
                "layer": 0,
                "pos_from_end": -1,
                "head": -1,
                "site": "resid_pre.0",
                "token": "x",
                "ld": ld,
                "ld_clean": clean,
                "ld_corrupt": corrupt,
                "prob": 0.5,
            }
        )
    rows.append({**rows[0], "pair": 2, "pos_from_end": -9, "ld": 5.0})
    agg = aggregate(pd.DataFrame(rows))
    last = agg[agg["pos_from_end"] == -1].iloc[0]
    assert last["n_pairs"] == 2
    # (mean ld - mean corrupt) / (mean clean - mean corrupt) = (2 - 1) / (3 - 1)
    assert last["ld_norm"] == pytest.approx(0.5)
    assert agg[agg["pos_from_end"] == -9].iloc[0]["ld_norm"] == pytest.approx(2.5)


@pytest.mark.slow
def test_ioi_name_moves_from_s2_to_the_end_in_smollm2(smollm2: object) -> None:
    """Denoising IOI on the real model: the subject token matters early, the end late."""
    from actscope.analyses.explain.pairs import load_pairs

    tp = tokenize_pairs(smollm2.tokenizer, load_pairs("ioi", limit=1))[0]  # type: ignore[attr-defined]
    s2, end = tp.length - 5, tp.length - 1
    assert tp.clean_ids[s2] != tp.corrupt_ids[s2]
    units = [
        PatchUnit(f"resid_pre.{layer}", "resid_pre", layer, p)
        for layer in (0, 29)
        for p in (s2, end)
    ]
    df = patch_pairs(smollm2, [tp], lambda _: units).set_index(["layer", "position"])["ld_norm"]
    assert df[(0, s2)] == pytest.approx(1.0, abs=0.05)  # the only differing token
    assert df[(0, end)] == pytest.approx(0.0, abs=1e-6)  # identical value: a no-op
    assert df[(29, s2)] == pytest.approx(0.0, abs=0.1)  # too late for the end to read it
    assert df[(29, end)] > 0.7  # the answer already sits in the last residual
