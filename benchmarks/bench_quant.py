"""Benchmark: the INT8/INT4 x granularity sensitivity sweep over every site of a model.

Measures, on the embedded SmolLM2-135M by default, the calibration pass (static per-tensor
ranges) and the sensitivity pass (8 quantizers: int8/int4 symmetric x tensor/token/channel/
group128, max clipping; ``--asym`` adds the 8 asymmetric ones) over all default sites
(every Linear input, embed, resid_mid, resid_post, final_norm) on ``--tokens`` held-out
tokens, and a plain forward pass over the same batches for reference. Reports wall and CPU
seconds, tokens/s, torch threads and the machine's load average (the CPU is shared), and
writes them as JSON.

    python benchmarks/bench_quant.py --tokens 20000 --out /tmp/bench_quant.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import torch

from actscope.analyses.quant import Calibrator, SensitivityMeter, expand_patterns, site_groups
from actscope.analyses.quant.groups import DEFAULT_SITES
from actscope.analyses.quant.run import final_norm_stopper
from actscope.capture import run
from actscope.capture.runner import forward
from actscope.data import default_pad_id, load_corpus, make_batches, tokenize_corpus
from actscope.interventions.quant import grid
from actscope.models import load_model


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn: Any) -> tuple[Any, dict[str, float]]:
    load0 = os.getloadavg()[0]
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the device's queued work belongs to this step
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return out, {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "load_avg_1m": load0}


def quant_batches(
    lm: Any, tokens: int, calib_tokens: int, seq_len: int, batch_size: int
) -> tuple[list[Any], list[Any]]:
    """(calibration batches, held-out batches) on the model's device: the two halves of the
    default corpus."""
    calib, held = load_corpus("default").split(0.5, 0)
    pad = default_pad_id(lm.tokenizer)

    def batches(corpus: Any, n: int) -> list[Any]:
        tok = tokenize_corpus(corpus, lm.tokenizer, seq_len=seq_len, max_tokens=n)
        return [b.to(lm.device) for b in make_batches(tok, batch_size, "right", pad)]

    return batches(calib, calib_tokens), batches(held, tokens)


def measure(
    lm: Any,
    cal_b: list[Any],
    eval_b: list[Any],
    *,
    model: str,
    asym: bool = False,
    out_tokens: int = 4096,
) -> dict[str, Any]:
    """Time the plain forward, the calibration pass and the sensitivity pass (8 quantizers,
    16 with ``asym``) over all default sites of ``lm`` on ``eval_b``."""
    n_eval = sum(b.n_tokens for b in eval_b)
    specs = grid(
        ["int8", "int4"],
        [True, False] if asym else [True],
        ["tensor", "token", "channel", "group"],
        ["max"],
    )
    groups = site_groups(lm, expand_patterns(lm, list(DEFAULT_SITES)))
    n_sites = sum(len(g.sites) for g in groups)

    def plain() -> None:
        with torch.inference_mode():
            for b in eval_b:
                forward(lm.model, b.input_ids, b.attention_mask)

    _, t_fwd = _timed(plain)
    cal = Calibrator(groups)
    stop = final_norm_stopper(cal.sites)  # the LM head is not needed, as in `actscope quant`
    _, t_cal = _timed(lambda: run(lm, cal_b, cal.sites, [cal, *stop]))
    calibration = cal.fit(specs)
    meter = SensitivityMeter(groups, specs, calibration, out_tokens=out_tokens or None)
    _, t_sens = _timed(lambda: run(lm, eval_b, meter.sites, [meter, *stop]))
    sens, _ = meter.tables()
    return {
        "model": model,
        "quantizers": [s.name for s in specs],
        "sites": n_sites,
        "distinct_tensors": len(groups),
        "eval_tokens": n_eval,
        "output_error_tokens": meter.out_done,
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "forward_only": {**t_fwd, "tokens_per_s": round(n_eval / max(t_fwd["wall_s"], 1e-6), 1)},
        "calibration": t_cal,
        "sensitivity": {**t_sens, "tokens_per_s": round(n_eval / max(t_sens["wall_s"], 1e-6), 1)},
        "rows": len(sens),
    }


def record(result: dict[str, Any], device: str) -> dict[str, Any]:
    """The ``quant_sweep`` record of ``benchmarks/results.jsonl`` for a :func:`measure` result."""
    fwd = result["forward_only"]["wall_s"]
    sens = result["sensitivity"]["wall_s"]
    return {
        "bench": "quant_sweep",
        "model": result["model"],
        "device": device,
        "threads": result["torch_threads"],
        "quantizers": len(result["quantizers"]),
        "sites": result["sites"],
        "distinct_tensors": result["distinct_tensors"],
        "eval_tokens": result["eval_tokens"],
        "sensitivity_wall_s": sens,
        "calibration_wall_s": result["calibration"]["wall_s"],
        "forward_wall_s": fwd,
        "sweep_over_forward": round(sens / fwd, 2) if fwd > 0 else None,
        "load_avg_1m": round(result["sensitivity"]["load_avg_1m"], 2),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--out-tokens", type=int, default=4096, help="0 = output error on all tokens")
    ap.add_argument("--asym", action="store_true", help="add the asymmetric quantizers")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="/tmp/bench_quant.json")
    args = ap.parse_args()

    lm = load_model(args.model, device="cpu")
    cal_b, eval_b = quant_batches(lm, args.tokens, args.calib_tokens, args.seq_len, args.batch_size)
    result = measure(
        lm, cal_b, eval_b, model=args.model, asym=args.asym, out_tokens=args.out_tokens
    )
    text = json.dumps(result, indent=2)
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
