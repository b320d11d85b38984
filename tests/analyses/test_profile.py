"""The profile: tables, merge across shards, aliases, exports, atomic run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests._models import get_model

from actscope.analyses.profile import (
    ProfileConfig,
    collect,
    compare_runs,
    finalize,
    prepare_batches,
    profile,
    read_run,
)
from actscope.capture import Trace, forward
from actscope.data import Corpus, Sample


def _corpus(n: int = 24) -> Corpus:
    words = ["alpha", "beta", "gamma", "delta", "x = y + 1", "def f(a):", "Привет мир", "3.14"]
    samples = [
        Sample(
            id=f"s{i}",
            domain=["prose", "code", "math", "multilingual"][i % 4],
            text=" ".join(words[(i + j) % len(words)] for j in range(5 + i % 7)),
            source="test",
        )
        for i in range(n)
    ]
    return Corpus(samples, name="unit")


CFG = ProfileConfig(max_tokens=None, seq_len=32, batch_size=4, top_k=8)


def test_profile_writes_a_complete_run(tmp_path: Path) -> None:
    lm = get_model("tiny:llama", "bf16")
    res = profile(lm, _corpus(), out=tmp_path / "run", config=ProfileConfig(**vars(CFG)))
    out = tmp_path / "run"
    for name in (
        "manifest.json",
        "summary.json",
        "report.html",
        "tables/site_stats.parquet",
        "tables/events.parquet",
        "tables/layers.parquet",
        "tables/domains.parquet",
        "tables/massive_channels.parquet",
        "tables/token_channel_view.parquet",
        "exports/smoothquant_act_scales.pt",
        "exports/awq_mean_abs.pt",
    ):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokens"] == res.manifest["tokens"] > 0
    assert manifest["model"]["name"] == "tiny:llama" and manifest["corpus"]["hash"]
    assert {"torch", "transformers"} <= set(manifest["versions"])
    # the run's wall time covers loading and collection, not only the writing
    assert manifest["wall_seconds"] >= manifest["collect_seconds"] > 0
    assert manifest["write_seconds"] > 0
    stats = pd.read_parquet(out / "tables/site_stats.parquet")
    assert {"site", "kind", "layer", "statistic", "value", "domain", "channel"} <= set(
        stats.columns
    )
    events = pd.read_parquet(out / "tables/events.parquet")
    assert {
        "site",
        "rank",
        "value",
        "sample_id",
        "position",
        "token_id",
        "token",
        "channel",
        "domain",
    } <= set(events.columns)
    html = (out / "report.html").read_text()
    assert "<img" in html and "http" not in html.split("<body>")[1].replace("https://", "")
    back = read_run(out)
    assert back["summary"]["global_max"]["site"] == res.summary["global_max"]["site"]
    assert not list(tmp_path.glob(".run*")), "temporary folder left behind"


def test_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import actscope.analyses.profile.report as report

    def broken(result: object) -> str:
        raise RuntimeError("report failed")

    monkeypatch.setattr(report, "build_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        profile(
            get_model("tiny:llama", "bf16"),
            _corpus(8),
            out=tmp_path / "run",
            config=ProfileConfig(**vars(CFG)),
        )
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())


def test_merge_of_two_halves_equals_the_whole() -> None:
    lm = get_model("tiny:qwen3_moe", "bf16")
    cfg = ProfileConfig(**vars(CFG))
    batches, _ = prepare_batches(lm, _corpus(), cfg)
    whole = finalize(collect(lm, batches, cfg), lm.tokenizer)
    half = len(batches) // 2
    a = collect(lm, batches[:half], cfg)
    b = collect(lm, batches[half:], cfg)
    merged = finalize(a.merge(b), lm.tokenizer)
    # Equal to float64 rounding, except the per-channel kurtosis: the first batch of each half
    # takes its power sums about its own means, later ones about the running reference (float32
    # block sums in the CPU kernel), so the two runs differ by float32 rounding there.
    for name in ("layers", "events", "massive_channels"):
        w, m = whole.tables[name], merged.tables[name]
        kurt = [c for c in w.columns if c.startswith("channel_kurtosis")]
        pd.testing.assert_frame_equal(
            w.drop(columns=kurt), m.drop(columns=kurt), check_exact=False, rtol=1e-9, atol=0
        )
        pd.testing.assert_frame_equal(w[kurt], m[kurt], check_exact=False, rtol=1e-5)
    w = whole.tables["site_stats"].set_index(["site", "statistic", "domain", "channel"])["value"]
    m = merged.tables["site_stats"].set_index(["site", "statistic", "domain", "channel"])["value"]
    w, m = w.sort_index(), m.sort_index()
    kurt = w.index.get_level_values("statistic").str.startswith("channel_kurtosis")
    pd.testing.assert_series_equal(w[~kurt], m[~kurt], rtol=1e-9)
    pd.testing.assert_series_equal(w[kurt], m[kurt], rtol=1e-5)
    assert merged.manifest["tokens"] == whole.manifest["tokens"]


def test_aliases_share_statistics_and_match_direct_computation() -> None:
    lm = get_model("tiny:llama", "bf16")
    cfg = ProfileConfig(**vars(CFG))
    batches, _ = prepare_batches(lm, _corpus(), cfg)
    res = finalize(collect(lm, batches, cfg), lm.tokenizer)
    lay = res.tables["layers"].set_index("site")
    assert lay.loc["q_in.0", "max_abs"] == lay.loc["attn_in.0", "max_abs"]
    assert lay.loc["resid_post.0", "max_abs"] == lay.loc["resid_pre.1", "max_abs"]
    # direct computation of max |a| and per-channel max at one Linear input over real tokens
    seen: list[torch.Tensor] = []
    with torch.inference_mode(), Trace(lm, ["down_in.1"], retain=True) as tr:
        for b in batches:
            forward(lm.model, b.input_ids, b.attention_mask)
            seen.append(tr["down_in.1"][b.attention_mask.bool()].float().abs())
    direct = torch.cat(seen)
    assert lay.loc["down_in.1", "max_abs"] == pytest.approx(float(direct.max()))
    scales = res.exports["smoothquant_act_scales"]["model.layers.1.mlp.down_proj"]
    torch.testing.assert_close(scales, direct.amax(0))
    assert res.exports["awq_mean_abs"]["model.layers.1.mlp.down_proj"].shape == (128,)
    med = float(direct.flatten().median())
    assert lay.loc["down_in.1", "median_abs"] == pytest.approx(med, rel=0, abs=0)


def test_compare_overlays_runs(tmp_path: Path) -> None:
    for fam in ("llama", "gpt2"):
        profile(
            get_model(f"tiny:{fam}", "bf16"),
            _corpus(8),
            out=tmp_path / fam,
            config=ProfileConfig(**vars(CFG)),
        )
    res = compare_runs([tmp_path / "llama", tmp_path / "gpt2"], out=tmp_path / "cmp")
    assert list(res["table"]["model"]) == ["tiny:llama", "tiny:gpt2"]
    assert np.isclose(res["curves"]["depth"].max(), 1.0)
    assert (tmp_path / "cmp" / "report.html").exists()


def test_massive_occurrences_group_events_by_token_and_channel() -> None:
    from actscope.analyses.profile.report import massive_occurrences

    ev = pd.DataFrame(
        {
            "site": ["resid_post.2", "resid_post.3", "resid_mid.5", "resid_post.4", "mlp_out.1"],
            "layer": [2, 3, 5, 4, 1],
            "rank": [1, 1, 1, 2, 1],
            "abs_value": [900.0, 1200.0, 1100.0, 500.0, 50.0],
            "sample_id": [7, 7, 7, 9, 7],
            "position": [0, 0, 0, 3, 0],
            "seq_position": [0, 0, 0, 3, 0],
            "channel": [11, 11, 11, 4, 11],
            "token": ["<bos>"] * 3 + [" the", "<bos>"],
            "domain": ["prose"] * 5,
            "massive": [True, True, True, True, False],
        }
    )
    occ = massive_occurrences(ev)
    assert len(occ) == 2  # (7, 0, 11) over three sites, (9, 3, 4); the non-massive one left out
    first = occ.iloc[0]
    assert (first["sample_id"], first["channel"], first["token"]) == (7, 11, "<bos>")
    assert first["max_abs"] == 1200.0 and first["at"] == "resid_post.3"
    assert (first["first_layer"], first["last_layer"], first["sites"]) == (2, 5, 3)
    assert occ.iloc[1]["max_abs"] == 500.0 and occ.iloc[1]["sites"] == 1
    assert massive_occurrences(ev.assign(massive=False)).empty


@pytest.mark.slow
def test_smollm2_profile_findings(tmp_path: Path) -> None:
    """SmolLM2 has massive activations on the residual stream at the first position."""
    lm = get_model("smollm2-135m", "bf16")
    res = profile(lm, "default", out=tmp_path / "smol", max_tokens=3000, seq_len=128)
    g = res.summary["global_max"]
    assert g["kind"].startswith("resid") and g["abs_value"] > 1000
    assert g["seq_position"] == 0
    sun = res.summary["sun_criterion"]
    assert sun["fires_layer_median"] and sun["layers_with_massive_layer_median"]
    # each criterion names the layers it fires on, and only those
    assert bool(sun["layers_with_massive_per_token_median"]) == sun["fires_per_token_median"]
    layers = res.tables["layers"]
    resid = layers[layers["kind"] == "resid_post"]
    hit = resid.loc[resid["massive_layer_count"] > 0, "layer"]
    assert sun["layers_with_massive_layer_median"] == [int(x) for x in hit]
