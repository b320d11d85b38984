"""The quant analysis on the embedded models (slow: loads SmolLM2-135M and Gemma 3 270M)."""

from __future__ import annotations

import math

import pytest

from actscope.analyses.quant import (
    ImatrixCollector,
    QuantConfig,
    analyze_quant,
    expand_patterns,
    perplexity_sweep,
    site_groups,
)
from actscope.capture import run
from actscope.data import load_corpus, make_batches, tokenize_corpus

pytestmark = pytest.mark.slow


def _batches(lm, tokens: int, part: int = 1):  # type: ignore[no-untyped-def]
    corpus = load_corpus("default").split(0.5, 0)[part]
    tok = tokenize_corpus(corpus, lm.tokenizer, seq_len=128, max_tokens=tokens)
    return list(make_batches(tok, 4, "right", 0))


def test_smollm2_massive_layer_prefers_per_token_scales(smollm2) -> None:  # type: ignore[no-untyped-def]
    cfg = QuantConfig(
        sites=["resid_post.11", "down_in.11", "q_in.3"],
        quantizers=["int8-sym-tensor-max", "int8-sym-token-max", "int8-sym-tensor-p99.99"],
        calib_tokens=512,
        eval_tokens=512,
        seq_len=128,
        batch_size=4,
        out_tokens=None,
        e2e=False,
        imatrix=False,
    )
    res = analyze_quant(smollm2, config=cfg)
    assert res.data["exact_percentiles"]  # bf16 activations: exact calibration quantiles
    s = res.sensitivity.set_index(["site", "quantizer"])
    st = res.site_stats.set_index("site")
    assert st.loc["resid_post.11", "max_abs"] > 1000  # the massive activation (channel 507)
    tensor = s.loc[("down_in.11", "int8-sym-tensor-max"), "out_rel_err"]
    token = s.loc[("down_in.11", "int8-sym-token-max"), "out_rel_err"]
    assert token < tensor
    clip = s.loc[("resid_post.11", "int8-sym-tensor-p99.99"), "clip_rate"]
    assert 0 < clip < 1e-3
    assert res.calibration.act_scales["model.layers.3.self_attn.q_proj"].shape == (576,)


def test_gemma3_smoothing_is_nearly_lossless_in_bf16(gemma3) -> None:  # type: ignore[no-untyped-def]
    calib, held = _batches(gemma3, 256, 0), _batches(gemma3, 256, 1)
    groups = site_groups(gemma3, expand_patterns(gemma3, ["linear_in"]))
    from actscope.analyses.quant import Calibrator

    cal = Calibrator(groups)
    col = ImatrixCollector(gemma3, groups)
    run(gemma3, calib, cal.sites, [cal, col])
    scales = cal.fit([]).act_scales
    df = perplexity_sweep(gemma3, held, scales, schemes=["W8A8"], alphas=[0.5])
    fp = float(df.perplexity.iloc[0])
    ctrl = float(df[(df.scheme == "fp") & df.smoothing].perplexity.iloc[0])
    assert abs(ctrl / fp - 1) < 0.02  # only the bf16 rounding of the folded weights
    assert all(math.isfinite(p) for p in df.perplexity)
    names = col.entries()
    assert "blk.0.attn_q.weight" in names and "blk.17.ffn_down.weight" in names
    assert names["blk.0.attn_q.weight"].counts[0] == sum(b.n_tokens for b in calib)
