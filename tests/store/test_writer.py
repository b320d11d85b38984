"""Building a store: the rows are the model's activations, and an interrupted build resumes.

The resume test kills a real child process (SIGKILL) after it wrote two shards, resumes in
this process and compares every shard byte for byte with an uninterrupted build.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests._models import get_model
from tests.store._corpus import small_corpus, write_corpus

from actscope.capture import Trace, forward
from actscope.data import Corpus, load_corpus
from actscope.store import ActivationStore, StoreError, build_store, shard_name

SITES = ["resid_post.1", "mlp_in.0"]
ARGS: dict[str, Any] = dict(max_tokens=1200, seq_len=40, shard_mb=0.05, batch_size=4)


def _build(out: Path, corpus: Corpus | None = None, **kw: Any) -> Path:
    lm = get_model("tiny:llama")
    return build_store(lm, corpus or small_corpus(), SITES, out, **{**ARGS, **kw})


def test_rows_are_the_activations_of_each_token(tmp_path: Path) -> None:
    lm = get_model("tiny:llama")
    store = ActivationStore(_build(tmp_path / "s"))
    seqs = store.sequences()
    assert store.n_shards > 3 and len(store) == 1200 == int(seqs["length"].sum())
    assert list(store.sites) == ["mlp_in.0", "resid_post.1"] and store.dtype == torch.float32
    corpus = small_corpus()
    assert store.manifest["data"]["corpus_hash"] == corpus.hash
    assert store.manifest["model"]["name"] == "tiny:llama"
    everything = store.rows(0, len(store))
    start = 0
    for row in seqs.itertuples():  # stored order: shard by shard, chunk by chunk
        if row.Index % 5:  # every fifth chunk is enough to compare
            start += row.length
            continue
        ids = torch.tensor([list(row.token_ids)])
        with torch.inference_mode(), Trace(lm, SITES, retain=True) as tr:
            forward(lm.model, ids)
        sl = slice(start, start + row.length)
        assert torch.equal(everything.tokens[sl], ids[0])
        assert torch.equal(everything.position[sl], torch.arange(row.length))
        assert (everything.sample_index[sl] == row.sample_index).all()
        assert corpus.samples[row.sample_index].id == row.sample_id
        for site in SITES:
            torch.testing.assert_close(everything.acts[site][sl], tr[site][0], rtol=1e-5, atol=1e-5)
        start += row.length


def test_bfloat16_store_holds_rounded_values(tmp_path: Path) -> None:
    # one shard each, so both stores run the very same batches
    full = ActivationStore(_build(tmp_path / "f32", shard_mb=10))
    half = ActivationStore(_build(tmp_path / "bf16", shard_mb=10, dtype="bfloat16"))
    assert half.dtype == torch.bfloat16 and half.manifest["dtype"] == "bfloat16"
    a, b = full.rows(0, 300), half.rows(0, 300)
    assert torch.equal(a.acts["resid_post.1"].to(torch.bfloat16), b.acts["resid_post.1"])
    assert half.manifest["bytes"] < 0.6 * full.manifest["bytes"]


def test_finished_store_is_reused_and_other_settings_refused(tmp_path: Path) -> None:
    out = _build(tmp_path / "s")
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert _build(out) == out and (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(StoreError, match="already exists"):
        _build(out, seq_len=32)
    _build(out, seq_len=32, overwrite=True)
    assert ActivationStore(out).manifest["data"]["seq_len"] == 32


class _Interrupt(Exception):
    pass


def _interrupt_after(tokens: int) -> Any:
    seen = [0]

    def progress(n: int) -> None:
        seen[0] += n
        if seen[0] >= tokens:
            raise _Interrupt

    return progress


def test_interrupted_build_refuses_other_settings_and_recomputes_bad_shards(
    tmp_path: Path,
) -> None:
    out = tmp_path / "s"
    with pytest.raises(_Interrupt):
        _build(out, progress=_interrupt_after(500))
    partial = tmp_path / "s.partial"
    assert not out.exists() and (partial / "plan.json").exists()
    with pytest.raises(StoreError, match="interrupted store built with other settings"):
        _build(out, seq_len=32)
    done = {int(p.stem.split("-")[1]) for p in partial.glob("shard-*.json")}
    assert {0, 1} <= done
    shard1 = partial / shard_name(1)
    shard1.write_bytes(shard1.read_bytes()[:-8] + b"\0" * 8)  # corrupt a finished shard
    _build(out)
    store = ActivationStore(out)
    store.verify()
    rows = {s["index"]: s["rows"] for s in store.manifest["shards"]}
    reused = done - {1}
    assert store.manifest["last_session"]["tokens_computed"] == len(store) - sum(
        rows[i] for i in reused
    )
    assert not list(out.glob("shard-*.json")) and not partial.exists()


def test_restart_discards_an_interrupted_build(tmp_path: Path) -> None:
    out = tmp_path / "s"
    with pytest.raises(_Interrupt):
        _build(out, progress=_interrupt_after(300))
    _build(out, seq_len=32, resume=False)
    assert ActivationStore(out).manifest["last_session"]["tokens_computed"] == len(
        ActivationStore(out)
    )


_CHILD = """
import sys, time
import actscope.store.writer as writer
from actscope.data import Corpus, load_corpus
from actscope.models import load_model

original = writer.write_shard

def slow(*args, **kwargs):
    info = original(*args, **kwargs)
    time.sleep(0.4)  # leaves the parent time to kill between shards or inside one
    return info

writer.write_shard = slow
lm = load_model("tiny:llama", dtype="fp32", device="cpu")
writer.build_store(lm, load_corpus(sys.argv[2]), {sites!r}, sys.argv[1], **{args!r})
"""


def test_killed_build_resumes_to_byte_identical_shards(tmp_path: Path) -> None:
    corpus_file = write_corpus(tmp_path / "corpus.jsonl")
    reference = ActivationStore(_build(tmp_path / "ref", load_corpus(corpus_file)))
    out = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    code = _CHILD.format(sites=SITES, args=ARGS)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(out), str(corpus_file)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(partial.glob("shard-*.json"))) < 2:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child wrote no shard in time"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    finished_before = len(list(partial.glob("shard-*.json")))
    assert not out.exists() and finished_before < reference.n_shards

    resumed = ActivationStore(_build(out, load_corpus(corpus_file)))
    resumed.verify()
    assert resumed.manifest["last_session"]["tokens_computed"] < len(resumed)
    assert resumed.manifest["fingerprint"] == reference.manifest["fingerprint"]
    for a, b in zip(reference.manifest["shards"], resumed.manifest["shards"], strict=True):
        assert a["sha256"] == b["sha256"]
        assert (reference.path / a["file"]).read_bytes() == (out / b["file"]).read_bytes()
    ref_seq, res_seq = reference.sequences(), resumed.sequences()
    assert ref_seq.drop(columns="token_ids").equals(res_seq.drop(columns="token_ids"))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(ref_seq["token_ids"], res_seq["token_ids"], strict=True)
    )
    assert json.loads((out / "manifest.json").read_text())["n_tokens"] == len(reference)


@pytest.mark.slow
def test_smollm2_store_round_trips(smollm2: Any, tmp_path: Path) -> None:
    sites = ["resid_post.-1", "mlp_act.3"]
    out = build_store(
        smollm2, small_corpus(), sites, tmp_path / "s", max_tokens=600, seq_len=64, shard_mb=0.5
    )
    store = ActivationStore(out)
    assert store.verify() == store.manifest["bytes"]
    assert store.sites == {"mlp_act.3": 1536, "resid_post.29": 576}
    assert store.dtype == torch.bfloat16 and len(store) == 600
    first = store.sequences().iloc[0]
    ids = torch.tensor([list(first.token_ids)])
    with torch.inference_mode(), Trace(smollm2, list(store.sites), retain=True) as tr:
        forward(smollm2.model, ids)
    rows = store.rows(0, int(first.length))
    assert torch.equal(rows.tokens, ids[0])
    for site in store.sites:  # batched with padding vs alone: bf16 rounding may differ
        torch.testing.assert_close(rows.acts[site], tr[site][0], rtol=0.02, atol=0.05)
    batch = next(store.batches(256, seed=0, dtype=torch.float32))
    assert batch.acts["resid_post.29"].shape == (256, 576)
