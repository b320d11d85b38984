"""Throughput of distributed profiling: single process vs 1 and 2 Ray workers, merge overhead.

    python benchmarks/bench_ray.py --model smollm2-135m --max-tokens 4000
    python benchmarks/bench_ray.py --gpu-only          # on a GPU machine: profile vs forward

CPU section (always): the same profile (same corpus, config and batches) run
  * in this process with all intra-op threads, and with one thread (what one Ray worker gets);
  * with ``profile_ray`` on a local Ray cluster with 1 and with 2 workers (1 CPU each).
tokens/s = real tokens / wall seconds of the collection pass (model loading, Ray start-up and
finalisation reported separately); tokens per CPU-second = real tokens / CPU seconds of the
collecting processes (all their threads), which stays meaningful when other jobs share the
CPUs and wall-clock speed-ups cannot show. Merge overhead = driver-side merge of the shard states plus
their pickled size (what travels back through Ray's object store).

GPU section (when CUDA is visible): for each embedded model, tokens/s of a plain forward pass
over the profile's batches (no hooks) against a full profile (every site, all statistics).

Results are written as JSON (default ``benchmarks/results/bench_ray.json``) and printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from actscope.analyses.profile import ProfileConfig, collect, prepare_batches
from actscope.capture import forward
from actscope.data import load_corpus
from actscope.distributed import profile_ray
from actscope.models import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ray.json"


def _single(
    model: str, corpus: Any, cfg: ProfileConfig, threads: int, device: str
) -> dict[str, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        lm = load_model(model, device=device)
        batches, policy = prepare_batches(lm, corpus, cfg)
        load = time.perf_counter() - t0
        c0 = time.process_time()
        state = collect(lm, batches, cfg, policy=policy)
        cpu = time.process_time() - c0
    finally:
        torch.set_num_threads(before)
    return {
        "mode": f"single process, {threads} thread(s)",
        "tokens": state.tokens,
        "collect_seconds": round(state.seconds, 3),
        "tokens_per_s": round(state.tokens / state.seconds, 1),
        "cpu_seconds": round(cpu, 3),
        "tokens_per_cpu_second": round(state.tokens / cpu, 1),
        "load_and_tokenize_seconds": round(load, 3),
    }


def _ray(model: str, corpus: Any, cfg: ProfileConfig, workers: int, device: str) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        result = profile_ray(model, corpus, copy.deepcopy(cfg), workers=workers, device=device)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    d = result.manifest["distributed"]
    tokens = result.manifest["tokens"]
    return {
        "mode": f"ray, {workers} worker(s)",
        "tokens": tokens,
        "collect_seconds": d["collect_wall_seconds"],
        "tokens_per_s": round(tokens / d["collect_wall_seconds"], 1),
        "cpu_seconds": round(sum(d["worker_cpu_seconds"]), 3),
        "tokens_per_cpu_second": round(tokens / sum(d["worker_cpu_seconds"]), 1),
        "merge_seconds": d["merge_seconds"],
        "state_megabytes": round(d["state_bytes"] / 2**20, 2),
        "finalize_seconds": d["finalize_seconds"],
        "model_load_seconds": d["load_seconds"],
        "end_to_end_seconds": round(wall, 3),
        "shard_tokens": d["shard_tokens"],
    }


def _gpu(models: list[str], corpus: Any, cfg: ProfileConfig) -> list[dict[str, Any]]:
    rows = []
    for spec in models:
        lm = load_model(spec, device="cuda")
        batches, policy = prepare_batches(lm, corpus, cfg)
        on_dev = [b.to(lm.device) for b in batches]
        with torch.inference_mode():
            forward(lm.model, on_dev[0].input_ids, on_dev[0].attention_mask)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in on_dev:
                forward(lm.model, b.input_ids, b.attention_mask)
            torch.cuda.synchronize()
            plain = time.perf_counter() - t0
        collect(lm, batches[:2], cfg, policy=policy)  # warm-up of the statistics kernels
        torch.cuda.synchronize()
        state = collect(lm, batches, cfg, policy=policy)
        torch.cuda.synchronize()
        tokens = state.tokens
        rows.append(
            {
                "model": spec,
                "device": torch.cuda.get_device_name(0),
                "tokens": tokens,
                "forward_tokens_per_s": round(tokens / plain, 1),
                "profile_tokens_per_s": round(tokens / state.seconds, 1),
                "profile_over_forward_time": round(state.seconds / plain, 2),
            }
        )
        del lm
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="default")
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--sites", default="all")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gpu-models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--gpu-max-tokens", type=int, default=100_000)
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    corpus = load_corpus(args.corpus)
    cfg = ProfileConfig(
        sites=args.sites.split(","),
        max_tokens=args.max_tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    record: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "model": args.model,
        "config": cfg.to_dict(),
    }
    if not args.gpu_only:
        runs = [
            _single(args.model, corpus, cfg, torch.get_num_threads(), "cpu"),
            _single(args.model, corpus, cfg, 1, "cpu"),
            _ray(args.model, corpus, cfg, 1, "cpu"),
            _ray(args.model, corpus, cfg, 2, "cpu"),
        ]
        record["cpu"] = runs
        two = runs[3]
        record["merge_overhead"] = {
            "merge_seconds": two["merge_seconds"],
            "state_megabytes": two["state_megabytes"],
            "merge_fraction_of_collect": round(two["merge_seconds"] / two["collect_seconds"], 4),
            "speedup_2_workers_over_1": round(two["tokens_per_s"] / runs[2]["tokens_per_s"], 2),
        }
        record["load_average_at_end"] = os.getloadavg()
    if torch.cuda.is_available():
        gpu_cfg = ProfileConfig(sites=["all"], max_tokens=args.gpu_max_tokens)
        record["gpu"] = _gpu(args.gpu_models.split(","), corpus, gpu_cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, args.out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
