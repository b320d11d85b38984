"""Ray profiling equals the single-process profile: exactly for counts, maxima, histograms and
events, within float64 rounding for sums and moments."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from tests._models import get_model
from tests.store._corpus import small_corpus, write_corpus

from actscope.analyses.profile import (
    ProfileConfig,
    ProfileResult,
    collect,
    finalize,
    prepare_batches,
    profile,
    read_run,
)
from actscope.distributed import merge_states, profile_ray, shard_batches
from actscope.errors import ActscopeError

CONFIG = ProfileConfig(
    sites=["embed", "resid_post", "mlp_out", "attn_in.1", "down_in.0", "logits"],
    max_tokens=2400,
    seq_len=48,
    batch_size=4,
)
# sums of floats: merged in another order, equal up to float64 rounding
MOMENTS = {
    "mean",
    "std",
    "mean_abs",
    "mean_sq",
    "kurtosis_token_mean",
    "channel_kurtosis_mean",
    "channel_kurtosis_max",
    "domain_mean_abs",
    "domain_kurtosis_token_mean",
}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the reference like a Ray worker (1 CPU, hence one intra-op thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single() -> ProfileResult:
    with one_thread():
        return profile(get_model("tiny:llama"), small_corpus(150), config=copy.deepcopy(CONFIG))


def assert_same_profile(a: ProfileResult, b: ProfileResult) -> None:
    keys = ["site", "statistic", "domain", "channel"]
    sa, sb = (t.tables["site_stats"].sort_values(keys).reset_index(drop=True) for t in (a, b))
    assert sa[keys].equals(sb[keys])
    va, vb = sa["value"].astype(float).to_numpy(), sb["value"].astype(float).to_numpy()
    moment = sa["statistic"].isin(MOMENTS).to_numpy()
    exact = ~moment
    assert np.array_equal(va[exact], vb[exact], equal_nan=True), sa[exact][va[exact] != vb[exact]]
    np.testing.assert_allclose(va[moment], vb[moment], rtol=1e-6, atol=1e-12)
    assert moment.sum() > 0 and exact.sum() > moment.sum()
    pd.testing.assert_frame_equal(a.tables["events"], b.tables["events"])
    pd.testing.assert_frame_equal(a.tables["massive_channels"], b.tables["massive_channels"])
    la, lb = a.tables["layers"], b.tables["layers"]
    assert la.columns.equals(lb.columns)
    for col in la.columns:
        if la[col].dtype.kind == "f":
            np.testing.assert_allclose(la[col], lb[col], rtol=1e-6, equal_nan=True)
        else:
            assert la[col].equals(lb[col]), col
    for key in ("tokens", "padded_tokens", "batches"):
        assert a.manifest[key] == b.manifest[key]
    assert a.manifest["tokenization"] == b.manifest["tokenization"]
    assert a.summary["global_max"] == b.summary["global_max"]
    for name, table in a.exports["smoothquant_act_scales"].items():
        assert torch.equal(table, b.exports["smoothquant_act_scales"][name])


def test_shards_partition_the_batches() -> None:
    items = list(range(11))
    parts = [shard_batches(items, s, 3) for s in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert parts[1] == [1, 4, 7, 10]
    with pytest.raises(ActscopeError, match="shard"):
        shard_batches(items, 3, 3)


def test_merged_shard_states_equal_one_pass(single: ProfileResult) -> None:
    """The merge itself, without Ray: three shards collected here and merged."""
    lm = get_model("tiny:llama")
    cfg = copy.deepcopy(CONFIG)
    with one_thread():
        batches, policy = prepare_batches(lm, small_corpus(150), cfg)
        states = [
            collect(lm, shard_batches(batches, s, 3), cfg, policy=copy.deepcopy(policy))
            for s in range(3)
        ]
    merged = merge_states(states, policy=policy)
    result = finalize(merged, lm.tokenizer, domains=list(batches[0].domains))
    assert merged.shards == 3
    assert_same_profile(single, result)


def test_ray_profile_equals_single_process(
    ray_cluster: ModuleType, single: ProfileResult, tmp_path: Path
) -> None:
    seen: list[int] = []
    result = profile_ray(
        "tiny:llama",
        small_corpus(150),
        copy.deepcopy(CONFIG),
        workers=2,
        shards=3,
        dtype="fp32",
        device="cpu",
        out=tmp_path / "run",
        progress=seen.append,
    )
    assert_same_profile(single, result)
    dist = result.manifest["distributed"]
    assert dist["workers"] == 2 and dist["shards"] == 3 and dist["engine"] == "ray"
    assert sum(dist["shard_tokens"]) == single.manifest["tokens"] == sum(seen)
    assert dist["worker_num_gpus"] == 0 and dist["worker_devices"] == ["cpu", "cpu"]
    assert ray_cluster.is_initialized(), "profile_ray must not stop a runtime it did not start"
    back = read_run(tmp_path / "run")
    assert back["manifest"]["distributed"]["shards"] == 3
    assert (tmp_path / "run" / "report.html").exists()


def test_model_objects_are_refused() -> None:
    with pytest.raises(ActscopeError, match="model spec"):
        profile_ray(get_model("tiny:llama"), small_corpus(), CONFIG)  # type: ignore[arg-type]


def test_profile_cli_with_ray(ray_cluster: ModuleType, tmp_path: Path) -> None:
    from actscope.cli.main import main

    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "run"
    argv = ["profile", "--model", "tiny:llama", "--corpus", str(corpus), "--out", str(out),
            "--max-tokens", "600", "--seq-len", "32", "--batch-size", "4",
            "--sites", "resid_post,logits", "--dtype", "fp32", "--ray", "--workers", "2"]  # fmt: skip
    assert main(argv) == 0
    manifest = read_run(out)["manifest"]
    assert manifest["distributed"]["workers"] == 2 and manifest["tokens"] == 600


def test_profile_cli_without_ray_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import actscope.distributed.cluster as cluster
    from actscope.cli.main import main

    monkeypatch.setattr(cluster, "ray_available", lambda: False)
    corpus = write_corpus(tmp_path / "c.jsonl")
    argv = ["profile", "--model", "tiny:llama", "--corpus", str(corpus), "--ray",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "needs Ray" in err and "pip install 'actscope[ray]'" in err
    assert not (tmp_path / "run").exists()
