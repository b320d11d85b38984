"""Read an activation store: verified, memory-mapped shards and seeded shuffled batches.

    store = ActivationStore("/data/smollm2-resid")        # checks the manifest
    for b in store.batches(4096, sites="resid_post.6", seed=0):
        sae.step(b.acts["resid_post.6"].float())           # b.tokens: the token ids

Checksums. A shard's SHA-256 is compared with the manifest the first time the shard is
opened (``verify=True``, the default) and :meth:`ActivationStore.verify` checks them all; a
mismatch raises :class:`~actscope.store.format.StoreError` naming the file.

Shuffling. With ``shuffle=True`` the shard order is a permutation drawn from
``numpy.random.default_rng(seed)``; shards are then taken ``window`` at a time and the rows of
each window are permuted with the same generator before being cut into batches (a partial
batch carries over into the next window, so only the very last batch can be short). With
``window >= n_shards`` this is a uniform shuffle of all rows; smaller windows bound the pages
touched at once. The order depends only on the store, ``seed`` and ``window``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from actscope.store.format import (
    ROW_FIELDS,
    STORE_DTYPES,
    STORE_FORMAT,
    STORE_VERSION,
    MappedShard,
    StoreError,
    act_key,
)
from actscope.utils.hashing import sha256_file


@dataclass
class StoreBatch:
    """A batch of stored rows: ``tokens`` (B,) int64 and ``acts[site]`` (B, D).

    ``sample_index``, ``chunk_index`` and ``position`` (int64) locate each row in the corpus.
    """

    tokens: Tensor
    acts: dict[str, Tensor]
    sample_index: Tensor
    chunk_index: Tensor
    position: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class ActivationStore:
    """A finished activation store folder (see :mod:`actscope.store.writer` for the layout)."""

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            partial = self.path.with_name(f"{self.path.name}.partial")
            hint = f" (an interrupted build is in {partial}; resume it)" if partial.exists() else ""
            raise StoreError(f"{self.path} is not a finished activation store{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(mf.read_text())
        except ValueError as exc:
            raise StoreError(f"{mf} is not valid JSON: {exc}") from exc
        if self.manifest.get("format") != STORE_FORMAT:
            raise StoreError(f"{mf} is not an actscope activation store manifest")
        if self.manifest.get("version") != STORE_VERSION:
            raise StoreError(
                f"{self.path} has store version {self.manifest.get('version')}, "
                f"this actscope reads version {STORE_VERSION}"
            )
        self.verify_on_open = verify
        self._shards: dict[int, MappedShard] = {}
        self._offsets = np.cumsum([0] + [s["rows"] for s in self.manifest["shards"]])

    # description -----------------------------------------------------------------------------
    @property
    def sites(self) -> dict[str, int]:
        """``{site: channels}`` in capture order."""
        return dict(self.manifest["sites"])

    @property
    def dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.manifest["dtype"]]

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def __len__(self) -> int:
        """Number of stored rows (real tokens)."""
        return int(self.manifest["n_tokens"])

    def sequences(self) -> pd.DataFrame:
        """One row per token chunk in stored order (shard, offset, ids, domain, token_ids)."""
        return pd.read_parquet(self.path / "sequences.parquet")

    # integrity -------------------------------------------------------------------------------
    def _check(self, index: int) -> Path:
        entry = self.manifest["shards"][index]
        p = self.path / entry["file"]
        if not p.exists():
            raise StoreError(f"shard {p} is missing")
        if p.stat().st_size != entry["bytes"]:
            raise StoreError(
                f"shard {p} has {p.stat().st_size} bytes, manifest says {entry['bytes']}"
            )
        if sha256_file(p) != entry["sha256"]:
            raise StoreError(f"shard {p} fails its SHA-256 check (corrupt or modified)")
        return p

    def verify(self) -> int:
        """Check every shard and the sequence index against the manifest; return bytes checked."""
        total = 0
        for i in range(self.n_shards):
            self._check(i)
            total += self.manifest["shards"][i]["bytes"]
        seq = self.path / "sequences.parquet"
        if not seq.exists() or sha256_file(seq) != self.manifest["sequences_sha256"]:
            raise StoreError(f"{seq} is missing or fails its SHA-256 check")
        return total

    def shard(self, index: int) -> MappedShard:
        """Shard ``index`` memory-mapped (checksum verified on first open unless disabled)."""
        if index not in self._shards:
            if not 0 <= index < self.n_shards:
                raise StoreError(f"shard {index} out of range (store has {self.n_shards})")
            if self.verify_on_open:
                p = self._check(index)
            else:
                p = self.path / self.manifest["shards"][index]["file"]
            self._shards[index] = MappedShard(p)
        return self._shards[index]

    # reading ---------------------------------------------------------------------------------
    def rows(self, start: int, stop: int, sites: str | list[str] | None = None) -> StoreBatch:
        """Rows ``start:stop`` of the store in stored order (may span shards)."""
        idx = np.arange(start, min(stop, len(self)), dtype=np.int64)
        sh = np.searchsorted(self._offsets, idx, side="right") - 1
        return self._gather(sh, idx - self._offsets[sh], self._site_list(sites), None)

    def batches(
        self,
        batch_size: int,
        sites: str | list[str] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype | None = None,
    ) -> Iterator[StoreBatch]:
        """Yield batches of ``batch_size`` rows (see the module docstring for the order).

        ``rank``/``world_size`` give every ``world_size``-th batch to one of several data-
        parallel readers. ``dtype`` converts the activations (e.g. ``torch.float32``).
        """
        if batch_size < 1 or window < 1 or not 0 <= rank < world_size:
            raise StoreError(
                f"need batch_size >= 1, window >= 1 and 0 <= rank < world_size; got "
                f"{batch_size}, {window}, {rank}/{world_size}"
            )
        names = self._site_list(sites)
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.n_shards) if shuffle else np.arange(self.n_shards)
        pend_s = np.empty(0, dtype=np.int64)
        pend_r = np.empty(0, dtype=np.int64)
        k = 0
        for w in range(0, len(order), window):
            group = order[w : w + window]
            sizes = [self.manifest["shards"][int(g)]["rows"] for g in group]
            sh = np.repeat(group.astype(np.int64), sizes)
            rw = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
            if shuffle:
                perm = rng.permutation(len(sh))
                sh, rw = sh[perm], rw[perm]
            pend_s, pend_r = np.concatenate([pend_s, sh]), np.concatenate([pend_r, rw])
            while len(pend_s) >= batch_size:
                if k % world_size == rank:
                    yield self._gather(pend_s[:batch_size], pend_r[:batch_size], names, dtype)
                pend_s, pend_r = pend_s[batch_size:], pend_r[batch_size:]
                k += 1
        if len(pend_s) and not drop_last and k % world_size == rank:
            yield self._gather(pend_s, pend_r, names, dtype)

    def _site_list(self, sites: str | list[str] | None) -> list[str]:
        names = list(self.sites) if sites is None else [sites] if isinstance(sites, str) else sites
        missing = [s for s in names if s not in self.sites]
        if missing:
            raise StoreError(
                f"site(s) {', '.join(missing)} not in this store; it holds {', '.join(self.sites)}"
            )
        return names

    def _gather(
        self, sh: np.ndarray, rw: np.ndarray, sites: list[str], dtype: torch.dtype | None
    ) -> StoreBatch:
        """Rows ``rw[i]`` of shards ``sh[i]``, in that order."""
        n = len(sh)
        meta = {k: torch.empty(n, dtype=torch.int64) for k in ROW_FIELDS}
        acts = {
            s: torch.empty((n, d), dtype=self.dtype) for s, d in self.sites.items() if s in sites
        }
        for s in np.unique(sh):
            sel = np.nonzero(sh == s)[0]
            shard = self.shard(int(s))
            rows = rw[sel]
            where = torch.from_numpy(sel)
            for k in ROW_FIELDS:
                meta[k][where] = shard.take(k, rows).long()
            for site in acts:
                acts[site][where] = shard.take(act_key(site), rows)
        if dtype is not None:
            acts = {k: v.to(dtype) for k, v in acts.items()}
        return StoreBatch(
            tokens=meta["token_id"],
            acts=acts,
            sample_index=meta["sample_index"],
            chunk_index=meta["chunk_index"],
            position=meta["position"],
        )
