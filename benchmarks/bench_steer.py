"""Steered vs plain generation time, and batched extraction throughput (one process).

    python benchmarks/bench_steer.py [--model smollm2-135m] [--repeats 5] [--out bench.json]

Generation: the same left-padded prompts are generated greedily for a fixed number of new
tokens (``min_new_tokens = max_new_tokens``) through ``model.generate`` with the KV cache,
plain and with a steering vector added at one layer (and, separately, with a latched CAST-style
condition gating it). Runs are interleaved after a warm-up; the medians and the ratio
``steered / plain`` are reported (target: <= 1.05). Extraction: activations of the same texts
read at every layer with batch size 1 and 16 (texts per second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from actscope.interventions.steering import (
    Condition,
    Steering,
    SteeringVector,
    collect,
    encode_prompts,
    load_dataset,
    load_prompts,
)
from actscope.models import load_model


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the device's queued work belongs to this call
    return time.perf_counter() - t0


def bench_generation(lm: Any, prompts: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    enc = encode_prompts(lm, prompts).to(lm.device)
    hidden = lm.model.config.hidden_size
    layer = lm.model.config.num_hidden_layers // 2
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({layer: torch.randn(hidden, generator=g)})
    cond = Condition(
        torch.randn(hidden, generator=g), f"resid_post.{max(layer - 2, 0)}", -1.0, ">", "cos"
    )
    configs: dict[str, Steering | None] = {
        "plain": None,
        "steered": Steering(lm, vec, coef=2.0),
        "steered_conditional": Steering(lm, vec, coef=2.0, condition=cond),
    }

    def run(st: Steering | None) -> None:
        kw = dict(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id or 0,
        )
        with torch.inference_mode():
            if st is None:
                lm.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kw)
                return
            with st:
                st.set_prompt(enc.attention_mask)
                lm.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kw)

    for st in configs.values():
        run(st)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeats):
        for name, st in configs.items():
            times[name].append(_timed(lambda st=st: run(st)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": len(prompts),
        "new_tokens": new_tokens,
        "prompt_tokens": int(enc.input_ids.shape[1]),
        "repeats": repeats,
        "median_s": med,
        "all_s": times,
        "ratio_steered": med["steered"] / med["plain"],
        "ratio_conditional": med["steered_conditional"] / med["plain"],
    }


def bench_extraction(lm: Any, n_texts: int) -> dict[str, Any]:
    ds = load_dataset("sentiment-ab")
    pos, _ = ds.texts(lm.tokenizer)
    texts = pos[:n_texts]
    sites = [f"resid_post.{i}" for i in range(lm.model.config.num_hidden_layers)]
    out = {}
    for bs in (1, 16):
        collect(lm, texts[:4], sites, "answer", batch_size=bs)  # warm-up
        t = _timed(lambda bs=bs: collect(lm, texts, sites, "answer", batch_size=bs))
        out[f"batch_{bs}_texts_per_s"] = len(texts) / t
    out["speedup"] = out["batch_16_texts_per_s"] / out["batch_1_texts_per_s"]
    out["n_texts"] = len(texts)
    return out


def record(lm: Any, gen: dict[str, Any], extraction: dict[str, Any] | None) -> dict[str, Any]:
    """A ``steer`` record in the style of ``benchmarks/results.jsonl`` (generation medians,
    the steered / plain ratios, and the extraction throughput when measured)."""
    med = gen["median_s"]
    rec: dict[str, Any] = {
        "bench": "steer",
        "model": lm.name,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "dtype": str(lm.dtype),
        "batch": gen["batch"],
        "new_tokens": gen["new_tokens"],
        "prompt_tokens": gen["prompt_tokens"],
        "repeats": gen["repeats"],
        "plain_s": round(med["plain"], 4),
        "steered_s": round(med["steered"], 4),
        "conditional_s": round(med["steered_conditional"], 4),
        "steered_over_plain": round(gen["ratio_steered"], 3),
        "conditional_over_plain": round(gen["ratio_conditional"], 3),
    }
    if extraction is not None:
        rec |= {
            "extract_texts": extraction["n_texts"],
            "extract_b1_texts_s": round(extraction["batch_1_texts_per_s"], 1),
            "extract_b16_texts_s": round(extraction["batch_16_texts_per_s"], 1),
        }
    return rec | {"date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--extract-texts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    prompts = (load_prompts("prompts-open") * 4)[: args.prompts]
    res = {
        "model": lm.name,
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "torch_threads": torch.get_num_threads(),
        "generation": bench_generation(lm, prompts, args.new_tokens, args.repeats),
        "extraction": bench_extraction(lm, args.extract_texts),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        from actscope.utils.atomic import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
