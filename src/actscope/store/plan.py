"""What a store will hold, decided before any forward pass: sites, token chunks, shards, bytes.

The plan is a pure function of the model, the sites, the tokenized corpus and the options, so
an interrupted build is resumed by recomputing it and checking its fingerprint against the one
saved on disk. Shard ``k`` holds a fixed, contiguous range of token chunks, sorted by length
(longest first, ties in corpus order) so that its batches need little padding; the rows of a
shard follow that order, token by token.

Bytes on disk (exact for the arrays, the safetensors headers and index are an upper bound):

    bytes_per_row = 4 * len(ROW_FIELDS) + sum_site D_site * itemsize(dtype)
    estimate      = n_tokens * bytes_per_row + n_shards * HEADER_BYTES + n_tokens * 8 + 64 KiB

(the ``n_tokens * 8`` term bounds ``sequences.parquet``, which repeats the token ids).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from actscope.capture import Trace, forward, sitemap_of
from actscope.data import TokenizedCorpus, TokenSequence
from actscope.store.format import ROW_FIELDS, STORE_DTYPES, StoreError, dtype_name
from actscope.utils.atomic import free_bytes

HEADER_BYTES = 4096
"""Upper bound of one shard's safetensors header (a few hundred bytes per tensor)."""
_SITE_MODES = ("in", "out", "derived", "router")


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index``: token chunks ``order`` (indices into the tokenized corpus), ``rows`` tokens."""

    index: int
    order: tuple[int, ...]
    rows: int


@dataclass
class StorePlan:
    """Everything that determines the bytes of a store; its fingerprint names it."""

    model: dict[str, Any]
    sites: dict[str, int]
    dtype: str
    data: dict[str, Any]
    batch_size: int
    shards: list[ShardPlan] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes_per_row(self) -> int:
        item = torch.empty((), dtype=STORE_DTYPES[self.dtype]).element_size()
        return 4 * len(ROW_FIELDS) + item * sum(self.sites.values())

    def shard_bytes(self, shard: ShardPlan) -> int:
        """Upper bound of one shard file's size."""
        return shard.rows * self.bytes_per_row + HEADER_BYTES

    @property
    def estimated_bytes(self) -> int:
        """Upper bound of the whole store's size on disk (see module docstring)."""
        arrays = sum(self.shard_bytes(s) for s in self.shards)
        return arrays + 8 * self.n_tokens + 65536

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shards"] = [
            {"index": s.index, "order": list(s.order), "rows": s.rows} for s in self.shards
        ]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StorePlan:
        shards = [ShardPlan(s["index"], tuple(s["order"]), s["rows"]) for s in obj["shards"]]
        return cls(obj["model"], obj["sites"], obj["dtype"], obj["data"], obj["batch_size"], shards)

    @property
    def fingerprint(self) -> str:
        """sha256 of the plan's canonical JSON (sorted keys, no whitespace)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_identity(lm: Any) -> dict[str, Any]:
    """The parts of ``lm.describe()`` that change activations (not the device)."""
    d = lm.describe()
    keys = ("name", "source", "file_hash", "kind", "family", "dtype", "n_parameters")
    return {k: d.get(k) for k in keys}


def site_dims(lm: Any, patterns: list[str]) -> dict[str, int]:
    """``{site: channels}`` for the sites matching ``patterns``, from a 2-token forward pass.

    Only per-token sites of shape (batch, seq, D) can be stored; expert sites (recomputed,
    routed subsets of tokens) are refused.
    """
    sm = sitemap_of(lm)
    sites = sm.resolve(patterns)
    bad = [s.name for s in sites if s.mode not in _SITE_MODES]
    if bad:
        raise StoreError(
            f"sites {', '.join(bad[:4])} cannot be cached (expert sites hold routed subsets of "
            "tokens); cache mlp_in.L and router_logits.L instead"
        )
    ids = torch.tensor([[1, 2]], device=lm.device)
    with torch.inference_mode(), Trace(sm, [s.name for s in sites], retain=True) as tr:
        forward(lm.model, ids)
    dims: dict[str, int] = {}
    for s in sites:
        value = tr.retained[s.name]
        if value.dim() != 3 or tuple(value.shape[:2]) != (1, 2):
            raise StoreError(f"site '{s.name}' has shape {tuple(value.shape)}, not (batch, seq, D)")
        dims[s.name] = int(value.shape[-1])
    return dims


def cut_shards(
    sequences: tuple[TokenSequence, ...], bytes_per_row: int, shard_bytes: int
) -> list[ShardPlan]:
    """Consecutive chunk ranges of about ``shard_bytes`` each, every range sorted by length.

    A shard is closed at the first chunk boundary where its rows reach
    ``max(1, shard_bytes // bytes_per_row)``; chunks are never split across shards.
    """
    target = max(1, shard_bytes // max(1, bytes_per_row))
    shards: list[ShardPlan] = []
    start, rows = 0, 0
    for i, seq in enumerate(sequences):
        rows += len(seq)
        if rows >= target or i == len(sequences) - 1:
            idx = sorted(range(start, i + 1), key=lambda j: (-len(sequences[j]), j))
            shards.append(ShardPlan(len(shards), tuple(idx), rows))
            start, rows = i + 1, 0
    return shards


def make_plan(
    lm: Any,
    tokenized: TokenizedCorpus,
    dims: dict[str, int],
    *,
    dtype: torch.dtype,
    batch_size: int,
    shard_bytes: int,
    data: dict[str, Any],
) -> StorePlan:
    """The plan of a store of ``dims`` sites over ``tokenized`` (see module docstring)."""
    if dtype not in STORE_DTYPES.values():
        raise StoreError(f"cannot store activations as {dtype}; use {', '.join(STORE_DTYPES)}")
    if tokenized.n_tokens == 0:
        raise StoreError("the corpus gave no tokens to cache")
    plan = StorePlan(model_identity(lm), dict(dims), dtype_name(dtype), data, batch_size)
    plan.shards = cut_shards(tokenized.sequences, plan.bytes_per_row, shard_bytes)
    return plan


def check_disk(plan: StorePlan, where: Path, done_bytes: int = 0, reserve: int = 1 << 26) -> int:
    """Raise :class:`~actscope.errors.ResourceError` unless ``where`` holds the rest of the store.

    Needed = ``estimated_bytes - done_bytes`` (shards already on disk); refused when
    needed + ``reserve`` (64 MiB by default) exceeds the free bytes. Returns the bytes needed.
    """
    from actscope.runs import ensure_free

    needed = max(0, plan.estimated_bytes - done_bytes)
    smaller = ", use --store-dtype bfloat16" if plan.dtype == "float32" else ""
    ensure_free(
        where,
        needed,
        "the activation store",
        reserve=reserve,
        free=free_bytes(where),
        detail=f"{plan.n_tokens} tokens x {plan.bytes_per_row} bytes",
        hint=f"cache fewer sites or tokens (--max-tokens){smaller}, or pick another --out",
    )
    return needed
