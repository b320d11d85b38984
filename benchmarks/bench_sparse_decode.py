"""Sparse batch-1 decode on the CPU against the dense path, on the embedded models.

For each model, in one process and on the same shapes:

1. per-layer GEMV: dense ``F.linear`` vs the sparse kernels (``bag``: fused gather-scale-sum
   over the active rows of the pre-transposed weight; ``gather``: ``index_select`` of those
   rows then one product), selection cost included, in bf16 and fp32, with the ideal line
   ``dense x (1 - s)``;
2. end-to-end greedy decode with a KV cache: dense model vs the same model with every
   sparsified Linear replaced by its sparse stand-in, tokens/s at each target, the ideal and
   the Amdahl lines, and a check that the sparse path reproduces the masked-dense logits.

Masked-dense emulation is never timed. Thresholds come from a ``sparsity calibrate`` run
(``--thresholds``, one per model in the same order as ``--models``) or, without one, from
exact per-token top-k. Results go to ``--out/<model>`` as regular run directories
(tables, summary.json, report.html). Timings on a shared machine are noisy: the load average
is recorded next to every table, sweeps are interleaved and medians reported.

    python benchmarks/bench_sparse_decode.py --out /tmp/bench-sparse \\
        --thresholds /tmp/cal-smollm2 /tmp/cal-gemma3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from actscope.analyses.sparsity import bench_run, load_calibration
from actscope.analyses.sparsity.timing import SpeedResult
from actscope.models import load_model


def records(
    model: str, device: str, gemv: SpeedResult | None, decodes: list[SpeedResult]
) -> list[dict[str, Any]]:
    """One ``sparse_decode`` record of ``benchmarks/results.jsonl`` per (dtype, kernel,
    target) of a :func:`bench_run` result: decode tokens/s dense and sparse, the speed-up, its
    ideal ``1 / (1 - target)`` and Amdahl ``dense_ms / amdahl_ms`` bounds, and the per-layer
    GEMV speed-up at the same sparsity (None without the GEMV benchmark)."""
    out = []
    for d in decodes:
        t = d.table
        dense = t[t.path == "dense"].iloc[0]
        dtype = d.info["dtype"].replace("bfloat16", "bf16").replace("float32", "fp32")
        for r in t[t.path == "sparse"].itertuples():
            layer = None
            if gemv is not None and not gemv.table.empty:
                g = gemv.table
                g = g[(g.dtype == dtype) & (g.kernel == r.kernel)]
                g = g[(g.sparsity - r.target).abs() < 1e-9]
                if len(g):
                    layer = round(float(g.dense_us.sum() / g.sparse_us.sum()), 3)
            out.append(
                {
                    "bench": "sparse_decode",
                    "model": model,
                    "device": device,
                    "threads": d.info.get("torch_threads"),
                    "dtype": dtype,
                    "kernel": r.kernel,
                    "target": r.target,
                    "weight_sparsity": round(float(r.decode_weight_sparsity), 3),
                    "dense_tok_s": round(float(dense.tokens_per_s), 2),
                    "sparse_tok_s": round(float(r.tokens_per_s), 2),
                    "speedup": round(float(r.speedup), 3),
                    "ideal_speedup": round(1.0 / (1.0 - r.target), 3),
                    "amdahl_speedup": round(float(dense.ms_per_token / r.amdahl_ms), 3),
                    "layer_gemv_speedup": layer,
                    "load_avg_1m": d.info.get("loadavg_1m"),
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument(
        "--thresholds",
        nargs="*",
        default=None,
        help="calibrate run folders or thresholds.json, one per model",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/actscope-bench-sparse"))
    ap.add_argument("--rule", default="teal")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.5])
    ap.add_argument("--kernels", nargs="+", default=["bag", "gather"])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.thresholds and len(args.thresholds) != len(args.models):
        ap.error("give one --thresholds entry per model")
    for i, name in enumerate(args.models):
        cal = load_calibration(args.thresholds[i]) if args.thresholds else None
        lm = load_model(name, device="cpu")
        bench_run(
            lm,
            args.out / name,
            cal,
            rule=args.rule,
            targets=args.targets,
            mode="threshold" if cal is not None else "topk",
            kernels=args.kernels,
            dtypes=args.dtypes,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            n_threads=args.threads,
            progress=lambda s: print(f"  {s}", flush=True),
        )
        print(json.dumps(json.loads((args.out / name / "summary.json").read_text()), indent=1))


if __name__ == "__main__":
    main()
