"""Shard files: deterministic safetensors bytes across processes, zero-copy memory-mapped reads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actscope.store.format import MappedShard, StoreError, encode_shard, read_header

_ENCODE = """
import hashlib, torch
from actscope.store.format import encode_shard
t = {"token_id": torch.arange(5, dtype=torch.int32),
     "act.b": torch.linspace(-2, 2, 15).reshape(5, 3).to(torch.bfloat16),
     "act.a": torch.linspace(0, 1, 10).reshape(5, 2)}
meta = {"z": 1, "a": 2, "m": "x", "q": [1, 2], "format": "f", "shard": 3}
print(hashlib.sha256(encode_shard(t, meta)).hexdigest())
"""


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "token_id": torch.arange(5, dtype=torch.int32),
        "act.b": torch.linspace(-2, 2, 15).reshape(5, 3).to(torch.bfloat16),
        "act.a": torch.linspace(0, 1, 10).reshape(5, 2),
    }


def test_encoding_is_byte_identical_across_processes() -> None:
    # safetensors writes its metadata map in hash order, which differs between processes;
    # the store keeps a single canonical-JSON key so the bytes never depend on the process.
    digests = {
        subprocess.run(
            [sys.executable, "-c", _ENCODE], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    meta = {"z": 1, "a": 2, "m": "x", "q": [1, 2], "format": "f", "shard": 3}
    local = hashlib.sha256(encode_shard(_tensors(), meta)).hexdigest()
    assert digests == {local}


def test_mapped_shard_round_trips_every_dtype(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    path.write_bytes(encode_shard(_tensors(), {"shard": 7}))
    shard = MappedShard(path)
    assert shard.meta == {"shard": 7} and shard.rows == 5
    assert isinstance(shard.array("act.a"), np.memmap), "reads must come from the memory map"
    for key, ref in _tensors().items():
        got = shard.take(key, slice(None))
        assert got.dtype == ref.dtype and torch.equal(got, ref)
    rows = np.array([4, 0, 2])
    assert torch.equal(shard.take("act.b", rows), _tensors()["act.b"][torch.from_numpy(rows)])
    with pytest.raises(StoreError, match="no tensor 'act.c'"):
        shard.array("act.c")


def test_truncated_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(StoreError, match="too short"):
        read_header(path)
    path.write_bytes((10).to_bytes(8, "little") + b"{not json")
    with pytest.raises(StoreError, match="cannot read shard"):
        read_header(path)
