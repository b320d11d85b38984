"""Build an activation store: stream sites over a corpus into shards, resumably.

Layout while building (``OUT.partial/``) and when done (``OUT/``)::

    plan.json            the StorePlan and its fingerprint (written first)
    sequences.parquet    one row per token chunk, in stored order: shard, offset, length,
                         sample_index, sample_id, chunk_index, domain, token_ids
    shard-00000.safetensors ...
    shard-00000.json ... (only while building) rows, bytes and sha256 of the finished shard
    manifest.json        (only when done) format, plan, shards with sha256, timing

Each shard is written to a temporary file and renamed, then its checksum sidecar is written
the same way, so after a kill every shard on disk is either complete or absent. On resume the
plan is recomputed; a different fingerprint is refused (the store would mix two settings),
shards whose sidecar checksum matches are kept and the others are computed again. The forward
passes of a shard depend only on the plan, so a resumed store is byte-identical to an
uninterrupted one. The finished folder is renamed from ``OUT.partial`` to ``OUT`` last.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from actscope.capture import run
from actscope.data import (
    Batch,
    Corpus,
    TokenizedCorpus,
    default_pad_id,
    make_batches,
    policy_record,
    tokenize_corpus,
)
from actscope.data.batching import BosPolicy
from actscope.runs import (
    check_out,
    existing_output,
    library_versions,
    replace_refusal,
    write_failure,
)
from actscope.store.format import (
    ROW_FIELDS,
    STORE_DTYPES,
    STORE_FORMAT,
    STORE_VERSION,
    StoreError,
    act_key,
    encode_shard,
    shard_name,
)
from actscope.store.plan import ShardPlan, StorePlan, check_disk, make_plan, site_dims
from actscope.utils.atomic import atomic_write_bytes, atomic_write_text, publish_dir, temp_name
from actscope.utils.hashing import sha256_file

Progress = Callable[[int], None]


class _RowCollector:
    """Consumer gathering, per batch, the real-token rows of every site and their coordinates."""

    def __init__(self, sites: Iterable[str], dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.acts: dict[str, list[Tensor]] = {s: [] for s in sites}
        self.meta: dict[str, list[Tensor]] = {k: [] for k in ROW_FIELDS}

    def begin_batch(self, batch: Batch) -> None:
        mask = batch.attention_mask.bool()
        grid = mask.long()
        rows = {
            "token_id": batch.input_ids,
            "sample_index": batch.sample_ids[:, None].expand_as(grid),
            "chunk_index": batch.chunk_ids[:, None].expand_as(grid),
            "position": grid.cumsum(1) - 1,
        }
        for key, value in rows.items():
            self.meta[key].append(value[mask].to("cpu", torch.int32))

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        flat = value if mask is None else value[mask.to(value.device)]
        self.acts[site].append(flat.reshape(-1, value.shape[-1]).to("cpu", self.dtype))

    def tensors(self) -> dict[str, Tensor]:
        out = {k: torch.cat(v) for k, v in self.meta.items()}
        for site, parts in self.acts.items():
            out[act_key(site)] = torch.cat(parts)
        return out


def _sequences_table(plan: StorePlan, tok: TokenizedCorpus, corpus: Corpus) -> pa.Table:
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "shard",
            "offset",
            "length",
            "sample_index",
            "sample_id",
            "chunk_index",
            "domain",
            "token_ids",
        )
    }
    for shard in plan.shards:
        offset = 0
        for j in shard.order:
            seq = tok.sequences[j]
            rows["shard"].append(shard.index)
            rows["offset"].append(offset)
            rows["length"].append(len(seq))
            rows["sample_index"].append(seq.sample_index)
            rows["sample_id"].append(corpus.samples[seq.sample_index].id)
            rows["chunk_index"].append(seq.chunk_index)
            rows["domain"].append(tok.domains[seq.domain_index])
            rows["token_ids"].append(list(seq.input_ids))
            offset += len(seq)
    schema = pa.schema(
        [
            ("shard", pa.int32()),
            ("offset", pa.int64()),
            ("length", pa.int32()),
            ("sample_index", pa.int32()),
            ("sample_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("domain", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
        ]
    )
    return pa.table(rows, schema=schema)


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(temp_name(path.name))
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _sidecar(work: Path, index: int) -> Path:
    return work / shard_name(index).replace(".safetensors", ".json")


def _finished(work: Path, index: int) -> dict[str, Any] | None:
    """The sidecar of shard ``index`` when the shard on disk matches its checksum."""
    side, shard = _sidecar(work, index), work / shard_name(index)
    if not (side.exists() and shard.exists()):
        return None
    try:
        info = json.loads(side.read_text())
    except ValueError:
        return None
    if shard.stat().st_size != info.get("bytes") or sha256_file(shard) != info.get("sha256"):
        return None
    return dict(info)


def write_shard(
    lm: Any,
    plan: StorePlan,
    shard: ShardPlan,
    tok: TokenizedCorpus,
    work: Path,
    *,
    pad_id: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the forward passes of one shard, write it atomically, then its checksum sidecar."""
    seqs = [tok.sequences[j] for j in shard.order]
    batches = make_batches(
        seqs, plan.batch_size, "right", pad_id, bucket=False, domains=tok.domains
    )
    collector = _RowCollector(plan.sites, STORE_DTYPES[plan.dtype])
    run(lm, batches, list(plan.sites), [collector], progress=progress)
    tensors = collector.tensors()
    if tensors["token_id"].shape[0] != shard.rows:
        raise StoreError(
            f"shard {shard.index} captured {tensors['token_id'].shape[0]} rows, planned {shard.rows}"
        )
    meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "shard": shard.index}
    data = encode_shard(tensors, meta)
    path = atomic_write_bytes(work / shard_name(shard.index), data)
    info = {
        "index": shard.index,
        "file": path.name,
        "rows": shard.rows,
        "bytes": len(data),
        "sha256": sha256_file(path),
    }
    atomic_write_text(_sidecar(work, shard.index), json.dumps(info))
    return info


def build_store(
    lm: Any,
    corpus: Corpus,
    sites: str | list[str],
    out: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    seq_len: int = 256,
    bos: BosPolicy = "auto",
    max_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    shard_mb: float = 256.0,
    resume: bool = True,
    overwrite: bool = False,
    reserve_bytes: int = 1 << 26,
    progress: Progress | None = None,
    on_plan: Callable[[StorePlan, int], None] | None = None,
) -> Path:
    """Cache ``sites`` of ``lm`` over ``corpus`` into the store folder ``out``; return its path.

    ``dtype`` of the stored activations: None = the model's dtype when it is float32, float16
    or bfloat16. ``shard_mb``: target shard size in MiB. ``resume``: continue an interrupted
    build found in ``OUT.partial`` (False starts it again). A finished store with the same
    plan is returned as is; one with another plan is replaced only with ``overwrite``.
    Raises :class:`~actscope.errors.ResourceError` before any forward pass when the disk lacks
    room (estimate + ``reserve_bytes``). ``on_plan(plan, bytes_needed)`` is called once the
    plan passed that check; ``progress(n_tokens)`` after every batch (and for reused shards).
    """
    if shard_mb <= 0 or batch_size < 1:
        raise StoreError(f"need shard_mb > 0 and batch_size >= 1, got {shard_mb}, {batch_size}")
    out = Path(out)
    check_out(out, kind="store")  # before the shape probe and tokenisation
    work = out.with_name(f"{out.name}.partial")
    _check_workdir(work)
    patterns = [sites] if isinstance(sites, str) else list(sites)
    store_dtype = _store_dtype(dtype, lm.dtype)
    dims = site_dims(lm, patterns)
    tok = tokenize_corpus(
        corpus, lm.tokenizer, seq_len=seq_len, bos=bos, max_tokens=max_tokens, seed=seed
    )
    pad_id = default_pad_id(lm.tokenizer)
    data = policy_record(
        tok, padding_side="right", pad_id=pad_id, batch_size=batch_size, bucket=False
    )
    plan = make_plan(
        lm,
        tok,
        dims,
        dtype=store_dtype,
        batch_size=batch_size,
        shard_bytes=int(shard_mb * 2**20),
        data=data,
    )
    if _existing_matches(out, plan, overwrite):
        return out
    found = _resumable(work, plan, resume)
    done = found or {}
    needed = check_disk(plan, work, sum(d["bytes"] for d in done.values()), reserve_bytes)
    if on_plan is not None:
        on_plan(plan, needed)
    _init_workdir(work, plan, resuming=found is not None)
    if not (work / "sequences.parquet").exists():
        _write_parquet(work / "sequences.parquet", _sequences_table(plan, tok, corpus))

    t0 = time.perf_counter()
    computed = 0
    try:
        for shard in plan.shards:
            if shard.index in done:
                if progress is not None:
                    progress(shard.rows)
                continue
            done[shard.index] = write_shard(
                lm, plan, shard, tok, work, pad_id=pad_id, progress=progress
            )
            computed += shard.rows
        seconds = time.perf_counter() - t0
        _finish(work, out, plan, done, computed, seconds)
    except OSError as exc:  # disk full or read-only: one line, the finished shards stay
        kept = f"the finished shards in {work} are kept: run the command again to resume"
        mapped = write_failure(exc, out, work, kept)
        if mapped is None:
            raise
        raise mapped from exc
    return out


def _store_dtype(dtype: str | torch.dtype | None, model_dtype: torch.dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        if model_dtype in STORE_DTYPES.values():
            return model_dtype
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    name = aliases.get(dtype, dtype)
    if name not in STORE_DTYPES:
        raise StoreError(f"unknown store dtype '{dtype}'; use auto, {', '.join(STORE_DTYPES)}")
    return STORE_DTYPES[name]


def _existing_matches(out: Path, plan: StorePlan, overwrite: bool) -> bool:
    """True when ``out`` is a finished store of this very plan; refuse to clobber another."""
    manifest = out / "manifest.json"
    if not out.exists():
        return False
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text()).get("fingerprint")
        except ValueError:
            old = None
        if old == plan.fingerprint:
            return True
    if not overwrite:
        raise StoreError(
            f"{out} already exists and is not a store of these settings; pass --overwrite "
            "to replace it or choose another --out"
        )
    return False


def _check_workdir(work: Path) -> None:
    """Refuse a ``work`` path that is not an interrupted build (it would be deleted)."""
    found, _ = existing_output(work)
    resumable = found in ("folder", "store") and (work / "plan.json").is_file()
    if found in ("missing", "empty") or resumable:
        return
    raise StoreError(
        f"{work} exists and is not an interrupted store build (no plan.json); "
        "remove it or choose another --out"
    )


def _resumable(work: Path, plan: StorePlan, resume: bool) -> dict[int, dict[str, Any]] | None:
    """Sidecars of the finished shards of an interrupted build of ``plan`` in ``work``.

    None when there is nothing to resume (no folder, no plan file, or ``resume=False``);
    an interrupted build of another plan is refused. Reads only.
    """
    plan_file = work / "plan.json"
    if not (resume and plan_file.exists()):
        return None
    try:
        saved = json.loads(plan_file.read_text()).get("fingerprint")
    except ValueError:
        saved = None
    if saved != plan.fingerprint:
        raise StoreError(
            f"{work} holds an interrupted store built with other settings; rerun with those "
            "settings, or pass --restart to discard it"
        )
    done = {}
    for shard in plan.shards:
        info = _finished(work, shard.index)
        if info is not None:
            done[shard.index] = info
    return done


def _init_workdir(work: Path, plan: StorePlan, resuming: bool) -> None:
    """Start ``work`` afresh (plan file first), or clear the temporary files of a killed write."""
    if resuming:
        for stray in work.glob(".*"):
            stray.unlink(missing_ok=True)
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    body = {"fingerprint": plan.fingerprint, "plan": plan.to_json()}
    atomic_write_text(work / "plan.json", json.dumps(body, sort_keys=True))


def _finish(
    work: Path,
    out: Path,
    plan: StorePlan,
    done: dict[int, dict[str, Any]],
    computed: int,
    seconds: float,
) -> None:
    shards = [done[s.index] for s in plan.shards]
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "fingerprint": plan.fingerprint,
        "model": plan.model,
        "sites": plan.sites,
        "dtype": plan.dtype,
        "data": plan.data,
        "batch_size": plan.batch_size,
        "n_tokens": plan.n_tokens,
        "n_shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "estimated_bytes": plan.estimated_bytes,
        "shards": shards,
        "sequences_sha256": sha256_file(work / "sequences.parquet"),
        "last_session": {
            "tokens_computed": computed,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(computed / seconds, 1) if seconds > 0 else None,
        },
        "versions": library_versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(work / "manifest.json", json.dumps(manifest, indent=1))
    for shard in plan.shards:
        _sidecar(work, shard.index).unlink(missing_ok=True)
    publish_dir(work, out, lambda p: replace_refusal(p, "store"))


def read_sequences(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The ``sequences.parquet`` index of a store folder as a DataFrame."""
    return pd.read_parquet(Path(path) / "sequences.parquet")
