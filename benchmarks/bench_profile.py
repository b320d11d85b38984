"""Profile throughput against a plain forward pass and a naive per-sample implementation.

Runs, in one process on the same batches (bf16, batch 8 x 256 by default):

1. ``plain``: the model's forward pass alone (the limit);
2. ``actscope``: ``collect`` with every site and every statistic;
3. ``naive``: the approach of the papers' scripts: one hook per site, each sample of the
   batch processed separately, statistics reduced with ``.item()`` in the hook and top-K
   kept in Python lists (same statistic families, minus the histogram quantiles).

Plain and profile runs are interleaved ``--repeats`` times (medians). Prints tokens/s and
the ratio of each to the plain forward pass (ratio of the medians, and the median of the
per-repeat ratios of each profile run to the plain run just before it); ``--json`` appends a record
to ``benchmarks/results.jsonl``. The naive baseline is run on fewer batches (it is slow) and
its time scaled per token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from actscope.analyses.profile import ProfileConfig, collect, prepare_batches
from actscope.capture import Trace, forward
from actscope.data import Batch, load_corpus
from actscope.models import load_model


def _plain(lm: Any, batches: list[Any]) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            forward(lm.model, b.input_ids, b.attention_mask)
    return time.perf_counter() - t0


def _naive(lm: Any, batches: list[Any], sites: list[str]) -> float:
    """Per-sample Python statistics with host syncs in every hook (the reference scripts)."""
    state: dict[str, dict[str, Any]] = {
        s: {"max": 0.0, "sum": 0.0, "sq": 0.0, "n": 0, "top": []} for s in sites
    }
    current: dict[str, torch.Tensor] = {}

    def hook(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        m = current["mask"]
        for i in range(value.shape[0]):
            a = value[i][m[i].bool()].float()
            st = state[site]
            st["max"] = max(st["max"], a.abs().max().item())
            st["sum"] += a.sum().item()
            st["sq"] += (a * a).sum().item()
            st["n"] += a.numel()
            k = (a.abs().pow(4).mean(-1) / a.var(-1, unbiased=False).pow(2) - 3).mean().item()
            st["top"] = sorted([*st["top"], *a.abs().flatten().topk(3).values.tolist()])[-32:]
            st.setdefault("kurt", []).append(k)

    t0 = time.perf_counter()
    with torch.inference_mode(), Trace(lm, sites, consumers=[hook]):
        for b in batches:
            current["mask"] = b.attention_mask
            forward(lm.model, b.input_ids, b.attention_mask)
    return time.perf_counter() - t0


def profile_batches(
    lm: Any, tokens: int, batch_size: int, seq_len: int
) -> tuple[list[Batch], ProfileConfig]:
    """The default corpus cut as ``profile`` cuts it, keeping only full ``batch x seq_len``
    batches (same shapes for every timed run), moved to the model's device."""
    cfg = ProfileConfig(max_tokens=tokens, seq_len=seq_len, batch_size=batch_size)
    batches, _ = prepare_batches(lm, load_corpus("default"), cfg)
    full = [b.to(lm.device) for b in batches if b.input_ids.shape == (batch_size, seq_len)]
    return full, cfg


def regroup(batches: list[Batch], batch_size: int, n_batches: int) -> list[Batch]:
    """``n_batches`` batches of ``batch_size`` rows taken in turn from the rows of ``batches``
    (all of one width), cycling when there are fewer rows than asked for."""
    fields = ("input_ids", "attention_mask", "sample_ids", "domain_ids", "chunk_ids")
    pool = {f: torch.cat([getattr(b, f) for b in batches]) for f in fields}
    n_rows = pool["input_ids"].shape[0]
    out = []
    for j in range(n_batches):
        rows = torch.arange(j * batch_size, (j + 1) * batch_size, device=pool["input_ids"].device)
        rows = rows % n_rows
        out.append(
            dataclasses.replace(batches[0], **{f: pool[f].index_select(0, rows) for f in fields})
        )
    return out


def measure(
    lm: Any,
    batches: list[Batch],
    cfg: ProfileConfig,
    *,
    model: str,
    repeats: int = 3,
    naive_batches: int = 2,
) -> dict[str, Any]:
    """Plain forward vs ``collect`` (interleaved ``repeats`` times) and the naive baseline on
    the same ``batches``; the ``profile`` record of ``benchmarks/results.jsonl``."""
    n_tok = sum(int(b.attention_mask.sum()) for b in batches)
    _plain(lm, batches[:1])  # warm-up
    collect(lm, batches[:1], cfg)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    plain_runs, prof_runs = [], []
    for _ in range(repeats):  # interleaved, so that drift in machine load hits both
        sync()
        plain_runs.append(_plain(lm, batches))
        sync()
        t0 = time.perf_counter()
        state = collect(lm, batches, cfg)
        sync()
        prof_runs.append(time.perf_counter() - t0)
    t_plain, t_prof = statistics.median(plain_runs), statistics.median(prof_runs)
    paired = [b / a for a, b in zip(plain_runs, prof_runs, strict=True)]
    sites = [s.name for s in state.collector.sites]
    nb = batches[:naive_batches]  # none: the naive baseline is not run (its fields are None)
    n_naive = sum(int(b.attention_mask.sum()) for b in nb)
    t_naive = _naive(lm, nb, sites) * n_tok / n_naive if nb else None
    return {
        "bench": "profile",
        "model": model,
        "device": str(lm.device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "numba_threads": os.environ.get("NUMBA_NUM_THREADS", "default"),
        "repeats": repeats,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "dtype": str(lm.dtype),
        "batch": f"{cfg.batch_size}x{cfg.seq_len}",
        "tokens": n_tok,
        "sites": len(sites),
        "distinct_sites": len(state.collector.stats),
        "plain_tok_s": round(n_tok / t_plain, 1),
        "profile_tok_s": round(n_tok / t_prof, 1),
        "naive_tok_s": round(n_tok / t_naive, 1) if t_naive else None,
        "profile_over_plain": round(t_prof / t_plain, 3),
        # each profile run over the plain run just before it (robust to drift in machine load)
        "paired_ratios": [round(r, 3) for r in paired],
        "paired_median": round(statistics.median(paired), 3),
        "naive_over_plain": round(t_naive / t_plain, 2) if t_naive else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--naive-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs; medians reported")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--json", action="store_true", help="append the record to benchmarks/results.jsonl"
    )
    args = p.parse_args()

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    batches, cfg = profile_batches(lm, args.tokens, args.batch_size, args.seq_len)
    rec = measure(
        lm,
        batches,
        cfg,
        model=args.model,
        repeats=args.repeats,
        naive_batches=args.naive_batches,
    )
    print(json.dumps(rec, indent=2))
    if args.json:
        with open(Path(__file__).with_name("results.jsonl"), "a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
