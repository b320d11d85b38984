"""Reading a store: checksums on read, seeded shuffles that cover every row once, rank splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests._models import get_model
from tests.store._corpus import small_corpus

from actscope.store import ActivationStore, StoreBatch, StoreError, build_store, shard_name

SITES = ["resid_post.0", "attn_out.1"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    lm = get_model("tiny:llama")
    return build_store(
        lm, small_corpus(), SITES, out, max_tokens=900, seq_len=32, shard_mb=0.03, batch_size=4
    )


def _keys(b: StoreBatch) -> list[tuple[int, int, int]]:
    return list(
        zip(b.sample_index.tolist(), b.chunk_index.tolist(), b.position.tolist(), strict=True)
    )


def test_shuffled_batches_cover_every_row_once_with_matching_activations(
    store_path: Path,
) -> None:
    store = ActivationStore(store_path)
    assert store.n_shards >= 4
    ref = store.rows(0, len(store))
    index = {k: i for i, k in enumerate(_keys(ref))}
    assert len(index) == len(store), "(sample, chunk, position) names a row uniquely"
    batches = list(store.batches(64, seed=3, window=2))
    assert all(len(b) == 64 for b in batches[:-1]) and 0 < len(batches[-1]) <= 64
    seen = [index[k] for b in batches for k in _keys(b)]
    assert sorted(seen) == list(range(len(store)))
    assert seen != sorted(seen), "the rows were not shuffled"
    rows = torch.tensor(seen)
    got_tokens = torch.cat([b.tokens for b in batches])
    assert torch.equal(got_tokens, ref.tokens[rows])
    for site in SITES:
        got = torch.cat([b.acts[site] for b in batches])
        assert torch.equal(got, ref.acts[site][rows])


def test_order_depends_only_on_the_seed(store_path: Path) -> None:
    store = ActivationStore(store_path)

    def order(seed: int, **kw: int) -> list[tuple[int, int, int]]:
        return [k for b in store.batches(50, seed=seed, **kw) for k in _keys(b)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1, window=1) != order(1, window=100)
    plain = [k for b in store.batches(50, shuffle=False) for k in _keys(b)]
    assert plain == _keys(store.rows(0, len(store)))


def test_ranks_split_the_batches(store_path: Path) -> None:
    store = ActivationStore(store_path)
    every = [_keys(b) for b in store.batches(40, seed=0, drop_last=True)]
    parts = [
        [_keys(b) for b in store.batches(40, seed=0, drop_last=True, rank=r, world_size=2)]
        for r in (0, 1)
    ]
    assert parts[0] == every[0::2] and parts[1] == every[1::2]
    assert all(len(k) == 40 for k in every)
    assert sum(len(k) for k in every) == len(store) - len(store) % 40


def test_sites_and_dtype_selection(store_path: Path) -> None:
    store = ActivationStore(store_path)
    b = next(store.batches(8, sites="attn_out.1", dtype=torch.float64))
    assert list(b.acts) == ["attn_out.1"] and b.acts["attn_out.1"].dtype == torch.float64
    with pytest.raises(StoreError, match="not in this store"):
        next(store.batches(8, sites="resid_post.1"))
    with pytest.raises(StoreError, match="batch_size"):
        next(store.batches(0))


def test_corruption_is_caught_on_read(store_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in store_path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    shard = copy / shard_name(2)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # one flipped bit in the activations
    shard.write_bytes(bytes(data))
    store = ActivationStore(copy)
    store.shard(0)
    with pytest.raises(StoreError, match="SHA-256"):
        store.shard(2)
    with pytest.raises(StoreError, match=r"shard-00002.* SHA-256"):
        store.verify()
    with pytest.raises(StoreError, match="SHA-256"):
        list(store.batches(1000, seed=0))
    ActivationStore(copy, verify=False).shard(2)  # opt-out reads it anyway
    shard.unlink()
    with pytest.raises(StoreError, match="missing"):
        ActivationStore(copy).verify()


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a finished activation store"):
        ActivationStore(tmp_path)
    (tmp_path.with_name(tmp_path.name + ".partial")).mkdir()
    with pytest.raises(StoreError, match="interrupted build"):
        ActivationStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="not an actscope activation store"):
        ActivationStore(tmp_path)
