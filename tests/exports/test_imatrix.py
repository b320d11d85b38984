"""GGUF importance matrix: round trip through the gguf package, names, and collected sums."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.analyses.quant import ImatrixCollector, expand_patterns, site_groups
from actscope.capture import Trace, run
from actscope.data import Batch
from actscope.exports import (
    ImatrixEntry,
    ImatrixError,
    entries_from_sums,
    gguf_tensor_name,
    read_imatrix,
    write_imatrix,
)


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    entries = {
        "blk.0.attn_q.weight": ImatrixEntry(rng.random((1, 6)), [12], rng.normal(size=(1, 6))),
        "blk.1.ffn_down_exps.weight": ImatrixEntry(rng.random((3, 4)), [5, 0, 9]),
    }
    path = write_imatrix(
        tmp_path / "m.gguf", entries, datasets=["default"], chunk_count=3, chunk_size=256
    )
    back = read_imatrix(path)
    assert back.datasets == ["default"] and back.chunk_count == 3 and back.chunk_size == 256
    assert set(back.entries) == set(entries)
    for name, e in entries.items():
        np.testing.assert_array_equal(back.entries[name].sum_sq, e.sum_sq)
        np.testing.assert_array_equal(back.entries[name].counts, e.counts)
    assert back.entries["blk.1.ffn_down_exps.weight"].sum_x is None
    np.testing.assert_array_equal(
        back.entries["blk.0.attn_q.weight"].sum_x, entries["blk.0.attn_q.weight"].sum_x
    )
    # the llama.cpp layout: ggml shapes [n_in, n_mat] and [1, n_mat], F32, general.type imatrix
    r = gguf.GGUFReader(str(path))
    shapes = {t.name: (list(t.shape), t.tensor_type) for t in r.tensors}
    assert shapes["blk.1.ffn_down_exps.weight.in_sum2"] == ([4, 3], gguf.GGMLQuantizationType.F32)
    assert shapes["blk.1.ffn_down_exps.weight.counts"] == ([1, 3], gguf.GGMLQuantizationType.F32)
    assert r.get_field("general.type").contents() == "imatrix"
    mean = back.entries["blk.1.ffn_down_exps.weight"].mean_sq
    assert np.all(mean[1] == 1.0)  # zero count: llama-quantize uses 1


def test_entries_from_profile_sums(tmp_path: Path) -> None:
    sums = {
        "model.layers.0.mlp.down_proj": {"sum_sq": torch.tensor([1.0, 4.0]), "count": 7},
        "model.layers.1.self_attn.v_proj": {"sum_sq": np.array([2.0, 3.0]), "count": 5},
    }
    ent = entries_from_sums(sums, "llama", 2)
    assert set(ent) == {"blk.0.ffn_down.weight", "blk.1.attn_v.weight"}
    np.testing.assert_array_equal(ent["blk.0.ffn_down.weight"].sum_sq, [[1.0, 4.0]])
    assert ent["blk.1.attn_v.weight"].counts.tolist() == [5.0]
    write_imatrix(tmp_path / "p.gguf", ent, datasets=["d"], chunk_count=1, chunk_size=7)
    assert set(read_imatrix(tmp_path / "p.gguf").entries) == set(ent)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError):
        ImatrixEntry(np.ones((2, 3)), [1])
    with pytest.raises(ImatrixError):
        write_imatrix(tmp_path / "x.gguf", {}, datasets=[], chunk_count=0, chunk_size=1)
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ImatrixError):
        read_imatrix(tmp_path / "bad.gguf")
    with pytest.raises(ImatrixError, match="no GGUF tensor names"):
        gguf_tensor_name("x", "mamba", 2)


@pytest.mark.parametrize(
    ("module", "family", "name"),
    [
        ("model.layers.3.self_attn.q_proj", "llama", "blk.3.attn_q.weight"),
        ("model.layers.3.self_attn.o_proj", "gemma3_text", "blk.3.attn_output.weight"),
        ("model.layers.0.mlp.down_proj", "qwen2", "blk.0.ffn_down.weight"),
        ("model.layers.1.mlp.experts.gate_proj", "qwen3_moe", "blk.1.ffn_gate_exps.weight"),
        ("transformer.h.0.attn.c_attn", "gpt2", "blk.0.attn_qkv.weight"),
        ("lm_head", "llama", "output.weight"),
    ],
)
def test_names(module: str, family: str, name: str) -> None:
    assert gguf_tensor_name(module, family, 8) == name


def _batch() -> Batch:
    ids = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    z = torch.zeros(2, dtype=torch.long)
    return Batch(ids, mask, torch.arange(2), z, z, ("prose",), "right")


def test_collected_sums_match_the_activations(tmp_path: Path) -> None:
    lm = get_model("tiny:llama", "fp32")
    col = ImatrixCollector(lm, site_groups(lm, expand_patterns(lm, ["linear_in"])))
    b = _batch()
    run(lm, [b], col.sites, [col])
    with torch.inference_mode(), Trace(lm, ["down_in.1", "q_in.0"], retain=True) as tr:
        tr.set_mask(b.attention_mask)
        lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    real = b.attention_mask.bool()
    col.write(tmp_path / "m.gguf", datasets=["test"], chunk_size=9)
    m = read_imatrix(tmp_path / "m.gguf")
    assert len(m.entries) == 7 * 2 and m.chunk_count == 2
    for site, name in (("down_in.1", "blk.1.ffn_down.weight"), ("q_in.0", "blk.0.attn_k.weight")):
        x = tr[site][real].double()
        e = m.entries[name]
        np.testing.assert_allclose(e.sum_sq[0], (x**2).sum(0).numpy(), rtol=1e-5)
        np.testing.assert_allclose(e.sum_x[0], x.sum(0).numpy(), rtol=1e-4, atol=1e-5)
        assert e.counts.tolist() == [15.0]


def test_moe_experts_have_one_matrix_each(tmp_path: Path) -> None:
    lm = get_model("tiny:qwen3_moe", "fp32")
    col = ImatrixCollector(lm, site_groups(lm, expand_patterns(lm, ["linear_in"])))
    run(lm, [_batch()], col.sites, [col])
    ent = col.entries()
    for kind in ("gate", "up", "down"):
        e = ent[f"blk.0.ffn_{kind}_exps.weight"]
        assert e.sum_sq.shape[0] == 4
        assert e.counts.sum() == 15 * 2  # every real token goes to top-2 experts
    assert "blk.0.attn_q.weight" in ent
