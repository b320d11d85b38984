"""run_quant end to end on a tiny model: every table, export and the report are written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tests._models import get_model

from actscope.analyses.quant import QuantConfig, run_quant
from actscope.errors import ActscopeError
from actscope.exports import read_imatrix


def test_run_directory(tmp_path: Path) -> None:
    lm = get_model("tiny:llama", "bf16")
    cfg = QuantConfig(
        quantizers=["int8-sym-tensor-max", "int8-sym-token-max", "int4-sym-tensor-mse"],
        calib_tokens=512,
        eval_tokens=512,
        out_tokens=256,
        mse_tokens=64,
        seq_len=64,
        schemes=["W8A8", "W4A16"],
        alphas=[0.5],
    )
    res = run_quant(lm, tmp_path / "q", config=cfg)
    out = tmp_path / "q"
    for f in (
        "manifest.json",
        "summary.json",
        "report.html",
        "exports/imatrix.gguf",
        "exports/smoothquant_act_scales.pt",
    ):
        assert (out / f).exists(), f
    sens = pd.read_parquet(out / "tables" / "sensitivity.parquet")
    assert set(sens.quantizer) == set(cfg.quantizers)
    assert sens.out_tokens.iloc[0] >= 256
    assert (sens.clip_rate[sens.quantizer == "int8-sym-token-max"] == 0).all()
    # the passes stop at the final norm (no LM head), which is still measured, with its reader
    head = sens[sens.site == "final_norm"]
    assert len(head) == 3 and head.consumer.eq("lm_head").all() and head.out_rel_err.notna().all()
    ppl = pd.read_parquet(out / "tables" / "perplexity.parquet")
    assert list(ppl.scheme) == ["fp", "W8A8", "W4A16", "fp", "W8A8"]
    man = json.loads((out / "manifest.json").read_text())
    calib, held = man["data"]["calibration"], man["data"]["evaluation"]
    assert calib["corpus"].endswith("[0]") and held["corpus"].endswith("[1]")  # disjoint parts
    assert man["data"]["exact_percentiles"] is True
    assert set(man["timings"]) == {"calibration", "sensitivity", "perplexity"}
    m = read_imatrix(out / "exports" / "imatrix.gguf")
    assert len(m.entries) == 14 and m.entries["blk.0.attn_q.weight"].counts[0] == 512
    scales = torch.load(out / "exports" / "smoothquant_act_scales.pt")
    assert set(scales) - {"lm_head"} == {
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
    assert len(res.correlations) > 0


def test_bad_names_fail_before_work() -> None:
    with pytest.raises(ActscopeError, match="cannot parse"):
        QuantConfig(quantizers=["int8-sym-row-max"]).validate()
    with pytest.raises(ActscopeError, match="unknown scheme"):
        QuantConfig(schemes=["W2A2"]).validate()
    with pytest.raises(ActscopeError, match="unknown grid"):
        QuantConfig(grid="huge").validate()


@pytest.mark.parametrize("family", ["gpt2", "phi3", "qwen2_moe", "olmo2", "gemma3"])
def test_every_family(family: str) -> None:
    from actscope.analyses.quant import analyze_quant

    lm = get_model(f"tiny:{family}", "fp32")
    cfg = QuantConfig(
        quantizers=["int8-sym-tensor-max", "int4-asym-group32-p99"],
        calib_tokens=128,
        eval_tokens=128,
        seq_len=64,
        schemes=["W8A8"],
        alphas=[0.5],
    )
    res = analyze_quant(lm, config=cfg)
    lin = res.sensitivity[res.sensitivity.consumer.notna()]
    assert len(lin) > 0 and lin.out_rel_err.notna().all()
    smooth = res.perplexity.smoothing.any()
    assert smooth == (family == "gemma3")  # SmoothQuant folding: Llama/Qwen/Gemma families
    assert len(res.imatrix) > 0
