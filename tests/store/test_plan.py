"""Store plans: shard cutting, site shapes, the disk estimate and the refusal when it cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests._models import get_model
from tests.store._corpus import small_corpus

import actscope.store.plan as plan_mod
from actscope.data import TokenSequence
from actscope.errors import ResourceError
from actscope.store import StoreError, build_store, cut_shards, site_dims


def _seqs(lengths: list[int]) -> tuple[TokenSequence, ...]:
    return tuple(TokenSequence(i, 0, 0, tuple(range(n))) for i, n in enumerate(lengths))


def test_shards_partition_the_chunks_sorted_by_length() -> None:
    lengths = [5, 9, 3, 9, 1, 7, 2, 8]
    shards = cut_shards(_seqs(lengths), bytes_per_row=10, shard_bytes=120)  # 12 rows each
    seen = [j for s in shards for j in s.order]
    assert sorted(seen) == list(range(len(lengths)))
    assert [s.index for s in shards] == list(range(len(shards)))
    for s in shards:
        assert list(s.order) == sorted(s.order, key=lambda j: (-lengths[j], j))
        assert s.rows == sum(lengths[j] for j in s.order)
        assert min(s.order) == max(s.order) - len(s.order) + 1, "a shard is a contiguous range"
    # every shard but the last reaches the target, and dropping its last chunk would not
    for s in shards[:-1]:
        last = max(s.order)
        assert s.rows >= 12 and s.rows - lengths[last] < 12


def test_site_dims_reads_shapes_and_refuses_expert_sites() -> None:
    lm = get_model("tiny:qwen2_moe")
    dims = site_dims(lm, ["resid_post.1", "router_logits.0", "mlp_out.1"])
    assert dims["resid_post.1"] == 64 and dims["router_logits.0"] == 4
    with pytest.raises(StoreError, match="expert sites"):
        site_dims(lm, ["expert_out.0.1"])


def test_estimate_bounds_the_bytes_written(tmp_path: Path) -> None:
    lm = get_model("tiny:llama")
    seen = {}
    out = build_store(
        lm,
        small_corpus(),
        ["resid_post.1", "mlp_out.0"],
        tmp_path / "s",
        max_tokens=1500,
        seq_len=48,
        shard_mb=0.1,
        on_plan=lambda plan, needed: seen.update(plan=plan, needed=needed),
    )
    plan = seen["plan"]
    on_disk = sum(p.stat().st_size for p in out.iterdir() if p.name != "manifest.json")
    assert plan.bytes_per_row == 16 + 2 * 64 * 4
    assert on_disk <= plan.estimated_bytes <= 1.2 * on_disk
    assert seen["needed"] == plan.estimated_bytes


def test_refuses_before_any_work_when_the_disk_is_too_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = get_model("tiny:llama")
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: 2**20)
    calls = []
    handle = lm.model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ResourceError, match=r"needs .* more on disk .* has only 1.0 MiB free"):
            build_store(
                lm,
                small_corpus(),
                "resid_post",
                tmp_path / "s",
                max_tokens=20_000,
                seq_len=64,
                dtype=torch.float32,
            )
    finally:
        handle.remove()
    shape_probe = 1  # site_dims runs one 2-token forward to learn the shapes
    assert len(calls) == shape_probe
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
