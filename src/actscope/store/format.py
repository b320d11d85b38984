"""Shard files of an activation store: safetensors written deterministically, read by mmap.

A shard is one safetensors file holding ``R`` rows, one row per real (non-padding) token:

    token_id      int32 (R,)     vocabulary id of the token
    sample_index  int32 (R,)     index of the corpus sample (``Corpus.samples[i]``)
    chunk_index   int32 (R,)     chunk of that sample (long samples are cut at ``seq_len``)
    position      int32 (R,)     position of the token inside its chunk (0 = first)
    act.<site>    dtype (R, D)   activations of ``<site>`` at that token

safetensors rather than Arrow/Parquet: it stores bfloat16 natively (Arrow has no bfloat16
type, so a bf16 store would need a float32 copy or an opaque binary column), its layout is a
JSON header followed by raw little-endian arrays, so a shard is memory-mapped and rows are read
without any decoding, and it holds no pickled code. Its writer orders tensors by
(alignment, name); its ``__metadata__`` map, however, is serialised in hash order, which
changes between processes. To keep shards byte-identical across runs the metadata is a single
key, ``actscope``, holding canonical JSON (sorted keys).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import Tensor

from actscope.errors import DataError

STORE_FORMAT = "actscope-activation-store"
STORE_VERSION = 1
ROW_FIELDS = ("token_id", "sample_index", "chunk_index", "position")
"""Per-row int32 metadata tensors present in every shard."""
ACT_PREFIX = "act."

_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; viewed as torch.bfloat16 after the copy
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Activation dtypes a store can hold, by the name used in manifests."""


class StoreError(DataError):
    """An activation store that is missing, incomplete, corrupt or does not match a request."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``."""
    return f"shard-{index:05d}.safetensors"


def act_key(site: str) -> str:
    """Tensor name of a site's activations inside a shard."""
    return f"{ACT_PREFIX}{site}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the manifest spelling)."""
    return str(dtype).replace("torch.", "")


def encode_shard(tensors: dict[str, Tensor], meta: dict[str, Any]) -> bytes:
    """Serialise ``tensors`` (contiguous, CPU) and ``meta`` to safetensors bytes.

    Deterministic: the same tensors and metadata give the same bytes in any process.
    """
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(flat, metadata={"actscope": json.dumps(meta, sort_keys=True)})


def read_header(path: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    """``(data_start, header)`` of a safetensors file: byte offset of the data and the JSON."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise StoreError(f"{p} is too short to be a safetensors shard")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise StoreError(f"{p} has an implausible safetensors header ({n} bytes)")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read shard {p}: {exc}") from exc
    return 8 + n, header


class MappedShard:
    """A shard opened as one read-only memory map; arrays are zero-copy views into it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        start, header = read_header(self.path)
        meta = header.pop("__metadata__", {}) or {}
        self.meta: dict[str, Any] = json.loads(meta.get("actscope", "{}"))
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._arrays: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, str] = {}
        for key, info in header.items():
            kind = info["dtype"]
            if kind not in _NP_DTYPES:
                raise StoreError(f"{self.path}: unsupported dtype {kind} for tensor {key}")
            lo, hi = info["data_offsets"]
            view = self._map[start + lo : start + hi].view(_NP_DTYPES[kind])
            self._arrays[key] = view.reshape(info["shape"])
            self._dtypes[key] = kind

    @property
    def rows(self) -> int:
        return int(self._arrays["token_id"].shape[0])

    def keys(self) -> list[str]:
        return list(self._arrays)

    def array(self, key: str) -> np.ndarray:
        """The memory-mapped array of ``key`` (bfloat16 appears as its uint16 bit pattern)."""
        try:
            return self._arrays[key]
        except KeyError:
            raise StoreError(f"{self.path} has no tensor '{key}'") from None

    def take(self, key: str, index: np.ndarray | slice) -> Tensor:
        """Rows ``index`` of ``key`` copied out of the map into a torch tensor."""
        rows = np.asarray(self.array(key))[index]
        if not (rows.flags.writeable and rows.flags.c_contiguous):
            rows = np.array(rows)  # a slice is still a view of the read-only map: copy it
        out = torch.from_numpy(rows)
        return out.view(torch.bfloat16) if self._dtypes[key] == "BF16" else out
