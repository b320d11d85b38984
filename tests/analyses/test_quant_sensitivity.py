"""Site grouping, output probes, calibration ranges and per-site errors against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.analyses.quant import (
    Calibrator,
    OutputProbe,
    SensitivityMeter,
    expand_patterns,
    site_groups,
)
from actscope.analyses.quant.groups import Consumer
from actscope.capture import Trace, run
from actscope.data import Batch
from actscope.interventions.quant import QuantSpec, fake_quantize

SPECS = [
    QuantSpec.parse(s)
    for s in (
        "int8-sym-token-max",
        "int4-asym-group32-max",
        "int8-sym-tensor-max",
        "int8-sym-tensor-p99",
        "int4-sym-token-mse",
        "fp8-sym-channel-p99.9",
    )
]


def _batches(dtype_seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(dtype_seed)
    out = []
    for b in range(2):
        ids = torch.randint(0, 250, (3, 16), generator=g)
        mask = torch.ones(3, 16, dtype=torch.long)
        mask[1, 11:] = 0
        mask[2, 5:] = 0
        out.append(
            Batch(
                input_ids=ids,
                attention_mask=mask,
                sample_ids=torch.arange(3) + 3 * b,
                domain_ids=torch.zeros(3, dtype=torch.long),
                chunk_ids=torch.zeros(3, dtype=torch.long),
                domains=("prose",),
                padding_side="right",
            )
        )
    return out


def _capture(lm, batches, sites):  # type: ignore[no-untyped-def]
    """Real-token rows of every site, concatenated over batches."""
    got: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for b in batches:
        with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
            tr.set_mask(b.attention_mask)
            lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
        for s in sites:
            got[s].append(tr[s][b.attention_mask.bool()])
    return {s: torch.cat(v) for s, v in got.items()}


def test_groups_share_tensors() -> None:
    lm = get_model("tiny:llama", "fp32")
    groups = site_groups(lm, expand_patterns(lm, ["linear_in", "resid_pre", "resid_post"]))
    by_site = {s.name: g for g in groups for s in g.sites}
    assert by_site["q_in.0"] is by_site["k_in.0"] is by_site["v_in.0"]
    assert by_site["gate_in.1"] is by_site["up_in.1"]
    assert by_site["resid_post.0"] is by_site["resid_pre.1"]
    assert by_site["o_in.0"] is not by_site["q_in.0"]
    assert [c.module for c in by_site["q_in.0"].consumers] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert by_site["resid_post.0"].consumers == []


def test_output_probe_direct_and_gram_paths() -> None:
    g = torch.Generator().manual_seed(0)
    narrow = torch.randn(40, 16, generator=g)  # in*2 <= out: Gram path
    wide = torch.randn(5, 16, generator=g)  # direct path
    probe = OutputProbe([Consumer("a", "a", wide), Consumer("b", "b", narrow)])
    assert len(probe.grams) == 1
    e = torch.randn(7, 16, generator=g)
    want = torch.stack([(e @ wide.T).square().sum(), (e @ narrow.T).square().sum()])
    torch.testing.assert_close(probe.sq_norms(e), want, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def measured():  # type: ignore[no-untyped-def]
    lm = get_model("tiny:llama", "fp32")
    groups = site_groups(lm, expand_patterns(lm, ["linear_in", "resid_post", "final_norm"]))
    batches = _batches()
    cal = Calibrator(groups, mse_tokens=64)
    run(lm, batches, cal.sites, [cal])
    calib = cal.fit(SPECS)
    meter = SensitivityMeter(groups, SPECS, calib)
    run(lm, batches, meter.sites, [meter])
    sens, stats = meter.tables()
    return lm, batches, calib, sens, stats


def test_calibrated_ranges_are_exact(measured) -> None:  # type: ignore[no-untyped-def]
    lm, batches, calib, _, _ = measured
    x = _capture(lm, batches, ["down_in.1"])["down_in.1"].double()
    r_max = calib.ranges[("down_in.1", "int8-sym-tensor-max")]
    assert r_max.hi == pytest.approx(float(x.abs().max()), rel=2**-8)  # fp32: bin midpoint
    r99 = calib.ranges[("down_in.1", "int8-sym-tensor-p99")]
    assert r99.hi == pytest.approx(float(torch.quantile(x.abs().flatten(), 0.99)), rel=2**-8)
    assert 0 < calib.ratios[("down_in.1", "int4-sym-token-mse")] <= 1
    a = calib.act_scales["model.layers.1.mlp.down_proj"]
    torch.testing.assert_close(a, x.abs().amax(0).float())


def test_errors_match_hand_computation(measured) -> None:  # type: ignore[no-untyped-def]
    lm, batches, calib, sens, _ = measured
    xs = _capture(lm, batches, ["down_in.1", "gate_in.0", "resid_post.1"])
    layer = lm.model.model.layers
    cases = [
        ("down_in.1", layer[1].mlp.down_proj.weight),
        ("gate_in.0", layer[0].mlp.gate_proj.weight),
        ("up_in.0", layer[0].mlp.up_proj.weight),
        ("resid_post.1", None),
    ]
    for site, w in cases:
        x = xs["gate_in.0" if site == "up_in.0" else site]
        group = "gate_in.0" if site == "up_in.0" else site
        for spec in SPECS:
            if spec.granularity == "channel":
                continue  # per-channel scales depend on the batch split: checked below
            static = calib.ranges.get((group, spec.name))
            ratio = calib.ratios.get((group, spec.name), 1.0)
            q, clipped = fake_quantize(x, spec, static=static, ratio=ratio)
            row = sens[(sens.site == site) & (sens.quantizer == spec.name)].iloc[0]
            rel = float((q - x).square().sum() / x.square().sum())
            assert row.rel_mse == pytest.approx(rel, rel=1e-4)
            assert row.sqnr_db == pytest.approx(-10 * math.log10(rel), abs=1e-3)
            assert row.clip_rate == pytest.approx(int(clipped) / x.numel())
            if w is None:
                assert np.isnan(row.out_rel_err)
            else:
                out = float(((q - x) @ w.T).norm() / (x @ w.T).norm())
                assert row.out_rel_err == pytest.approx(out, rel=1e-4)


def test_per_channel_scales_follow_batches(measured) -> None:  # type: ignore[no-untyped-def]
    lm, batches, _, sens, _ = measured
    spec = SPECS[-1]
    err = num = 0.0
    for b in batches:
        x = _capture(lm, [b], ["o_in.0"])["o_in.0"]
        q, _ = fake_quantize(x, spec)
        err += float((q - x).square().sum())
        num += float(x.square().sum())
    row = sens[(sens.site == "o_in.0") & (sens.quantizer == spec.name)].iloc[0]
    assert row.rel_mse == pytest.approx(err / num, rel=1e-4)


def test_site_statistics(measured) -> None:  # type: ignore[no-untyped-def]
    lm, batches, _, _, stats = measured
    x = _capture(lm, batches, ["resid_post.0"])["resid_post.0"].double()
    row = stats[stats.site == "resid_post.0"].iloc[0]
    assert row.max_abs == pytest.approx(float(x.abs().max()), rel=1e-6)
    assert row.rms == pytest.approx(float(x.square().mean().sqrt()), rel=1e-6)
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1)
    k = ((x**4).mean(-1) / var**2 - 3).clamp(min=0)
    assert row["kurtosis"] == pytest.approx(float(k.mean()), rel=1e-5)
    assert row.n_tokens == sum(b.n_tokens for b in batches)
