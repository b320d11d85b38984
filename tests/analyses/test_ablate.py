"""Ablation: detection from a profile-like run directory, and the perplexity experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from actscope.analyses.ablate import AblationConfig, detect_targets, run_ablation
from actscope.models import load_model

CHANNEL = 5


def _profile(tmp: Path, layout: str = "events") -> Path:
    """A profile-like run: massive entries in channel 5 from resid_post.0 on, plus top events."""
    tables = tmp / "tables"
    tables.mkdir(parents=True)
    rows = [
        {
            "site": s,
            "kind": s.split(".")[0],
            "layer": int(s.split(".")[1]),
            "channel": CHANNEL,
            "count": 40,
        }
        for s in ("resid_post.1", "resid_post.0", "resid_pre.1")
    ]
    rows.append({"site": "resid_mid.1", "kind": "resid_mid", "layer": 1, "channel": 9, "count": 3})
    pd.DataFrame(rows).to_parquet(tables / "massive_channels.parquet")
    ev = pd.DataFrame(
        {
            "site": ["resid_post.0"] * 3 + ["resid_post.1", "resid_post.1", "mlp_act.0"],
            "kind": ["resid_post"] * 5 + ["mlp_act"],
            "layer": [0, 0, 0, 1, 1, 0],
            "rank": [1, 2, 3, 1, 2, 1],
            "value": [310.0, 290.0, 1.0, 305.0, -7.0, 1e6],
            "channel": [CHANNEL, CHANNEL, 11, CHANNEL, 11, 3],
            "massive": [True, True, False, True, False, True],
        }
    )
    if layout == "events":
        ev.to_parquet(tables / "events.parquet")
    else:
        ev.drop(columns="massive").to_parquet(tables / "topk_events.parquet")
        ev[ev.massive].drop(columns="massive").to_parquet(tables / "massive_events.parquet")
    stats = pd.DataFrame(
        {
            "site": ["resid_post.1", "resid_post.1", "mlp_act.1"],
            "kind": ["resid_post", "resid_post", "mlp_act"],
            "statistic": ["channel_max_abs", "max_abs", "channel_max_abs"],
            "value": [8.0, 305.0, 1e9],
            "channel": [13, None, 2],
        }
    )
    stats.to_parquet(tables / "site_stats.parquet")
    _manifest(tmp)
    return tmp


def _manifest(tmp: Path) -> None:
    """The manifest of a profile run of tiny:llama (what `ablate` checks the model against)."""
    model = {"name": "tiny:llama", "family": "llama", "file_hash": None}
    (tmp / "manifest.json").write_text(
        json.dumps(
            {
                "command": "profile",
                "model": model,
                "config": {"massive_abs": 100.0, "massive_ratio": 1000.0},
            }
        )
    )


@pytest.mark.parametrize("layout", ["events", "split"])
def test_detection(tmp_path: Path, layout: str) -> None:
    t = detect_targets(_profile(tmp_path, layout))
    assert t.found and t.first_site == "resid_post.0" and t.edit_site == "resid_post.0"
    # every massive channel is edited where it first appears (9: resid_mid.1 -> resid_post.1)
    assert t.channels == [CHANNEL, 9]
    assert t.first_seen == {CHANNEL: "resid_post.0", 9: "resid_mid.1"}
    assert t.sites == {"resid_post.0": [CHANNEL], "resid_post.1": [9]}
    # massive counts first, then the largest |a| of residual sites (mlp_act is not residual)
    assert t.ranking["channel"].tolist()[:4] == [CHANNEL, 9, 13, 11]
    assert t.profile_means == {CHANNEL: 300.0}
    assert (t.abs_threshold, t.ratio, t.median) == (100.0, 1000.0, "token")


def test_onset_ignores_a_rare_early_hit(tmp_path: Path) -> None:
    """A channel hit once at layer 0 and 30 times from layer 2 on starts at layer 2."""
    tables = tmp_path / "tables"
    tables.mkdir()
    counts = {"resid_post.0": 1, "resid_post.1": 2, "resid_post.2": 30, "resid_post.3": 32}
    pd.DataFrame(
        [
            {"site": s, "kind": "resid_post", "layer": int(s[-1]), "channel": 7, "count": n}
            for s, n in counts.items()
        ]
    ).to_parquet(tables / "massive_channels.parquet")
    _manifest(tmp_path)
    t = detect_targets(tmp_path)
    assert t.first_seen == {7: "resid_post.2"} and t.sites == {"resid_post.2": [7]}


def test_detection_from_massive_events_uses_the_layer_median(tmp_path: Path) -> None:
    path = _profile(tmp_path)
    (path / "tables" / "massive_channels.parquet").unlink()
    t = detect_targets(path)
    assert t.median == "layer" and t.sites == {"resid_post.0": [CHANNEL]}


def test_nothing_massive(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    pd.DataFrame({"site": ["resid_post.0"], "channel": [2], "value": [3.0]}).to_parquet(
        tmp_path / "tables" / "events.parquet"
    )
    _manifest(tmp_path)
    t = detect_targets(tmp_path)
    assert not t.found and t.ranking["channel"].tolist() == [2]


def _model_with_massive_channel():  # type: ignore[no-untyped-def]
    """tiny:llama whose embedding carries a massive value in channel 5 for bytes 'e' and ' '."""
    lm = load_model("tiny:llama", dtype="fp32", device="cpu")
    with torch.no_grad():
        emb = lm.model.model.embed_tokens.weight
        (e,) = lm.tokenizer("e", add_special_tokens=False)["input_ids"]
        (space,) = lm.tokenizer(" ", add_special_tokens=False)["input_ids"]
        emb[e, CHANNEL] = 300.0
        emb[space, CHANNEL] = -250.0
    return lm


def test_ablation_run(tmp_path: Path) -> None:
    lm = _model_with_massive_channel()
    cfg = AblationConfig(topk=[1, 2], calib_tokens=512, eval_tokens=512, seq_len=64, batch_size=4)
    res = run_ablation(lm, _profile(tmp_path / "p"), tmp_path / "out", config=cfg)
    tab = res.table.set_index("intervention")
    assert list(tab.index) == [
        "none",
        "massive-zero",
        "topk1-zero",
        "random1-zero",
        "topk2-zero",
        "random2-zero",
        "massive-mean",
        "topk1-mean",
        "random1-mean",
        "topk2-mean",
        "random2-mean",
    ]
    # 'e' and ' ' tokens carry the massive value: every one of them is edited once
    assert tab.loc["massive-zero", "entries_changed"] > 0
    assert tab.loc["massive-zero", "entries_changed"] == tab.loc["massive-mean", "entries_changed"]
    assert tab.loc["topk1-zero", "channels"] == str(CHANNEL)
    assert tab.loc["topk1-zero", "entries_changed"] == 512 * 3  # embed + 2 layer outputs
    base = tab.loc["none", "perplexity"]
    assert tab.loc["massive-zero", "perplexity"] != base
    # the mean replacement stays closer to the model than zeroing
    assert abs(tab.loc["massive-mean", "nll"] - tab.loc["none", "nll"]) < abs(
        tab.loc["massive-zero", "nll"] - tab.loc["none", "nll"]
    )
    for f in ("manifest.json", "summary.json", "report.html", "tables/ablation.parquet"):
        assert (tmp_path / "out" / f).exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["edit_sites"] == {"resid_post.0": [CHANNEL], "resid_post.1": [9]}
    assert tab.loc["massive-zero", "sites"] == f"resid_post.0:{CHANNEL},resid_post.1:9"


def test_edit_plan_first_and_all(tmp_path: Path) -> None:
    from actscope.analyses.ablate import _massive_plan

    t = detect_targets(_profile(tmp_path))
    stream = ["embed", "resid_post.0", "resid_post.1", "resid_post.2"]
    assert _massive_plan(t, stream, "first") == {"resid_post.0": [CHANNEL], "resid_post.1": [9]}
    assert _massive_plan(t, stream, "all") == {
        "resid_post.0": [CHANNEL],
        "resid_post.1": [CHANNEL, 9],
        "resid_post.2": [CHANNEL, 9],
    }
