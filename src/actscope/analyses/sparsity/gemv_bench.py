"""Per-layer GEMV timing: dense ``F.linear`` against the sparse CPU kernels, same shapes.

For every projection kind (q, k, v, o, gate, up, down) the real weights of all layers are
converted once to the dtype under test; one *sweep* calls the product once per layer in turn,
so the working set is the whole model's weights of that kind, as in decoding, and not a
cache-resident single matrix. Per call: ``dense_us`` (``F.linear``), ``kernel_us`` (the sparse
kernel given the active indices of a random active set of exactly ``in - round(s in)``
inputs), ``select_us`` (``|x| > t``, ``nonzero`` and the gather of the active inputs),
``sparse_us = kernel_us + select_us``, ``same_kernel_dense_us`` (the sparse kernel with every
index active) and the ideal line ``ideal_us = dense_us (1 - s)``; the ``*_cpu_us`` columns are
the same in thread CPU time. Each figure is the median over ``repeats`` sweeps after ``warmup``
sweeps; the sweeps of all variants are interleaved so that load changes on a shared machine hit
them alike. Masked-dense emulation is never timed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from actscope.analyses.sparsity.timing import SpeedResult, conditions, sweep_time, threads
from actscope.errors import ActscopeError
from actscope.interventions.sparsify_rules import linear_sites
from actscope.kernels.sparse_gemv import gemv_kernel, row_gemv, transpose_weight
from actscope.kernels.sparse_linear import linear_params
from actscope.models.loading import resolve_dtype


def gemv_benchmark(
    lm: Any,
    *,
    sparsities: Sequence[float] = (0.25, 0.4, 0.5, 0.65),
    dtypes: Sequence[str] = ("bf16", "fp32"),
    kernels: Sequence[str] = ("bag", "gather"),
    kinds: Sequence[str] | None = None,
    repeats: int = 7,
    warmup: int = 2,
    n_threads: int | None = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SpeedResult:
    """Per-layer GEMV times, dense vs sparse kernels (see the module docstring)."""
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ActscopeError(f"sparsities must lie in [0, 1), got {s}")
    for k in kernels:
        gemv_kernel(k)
    by_kind: dict[str, list[nn.Module]] = {}
    for lin, _layer, _block, module in linear_sites(lm).values():
        by_kind.setdefault(lin, []).append(module)
    kinds = list(kinds) if kinds else list(by_kind)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    with threads(n_threads), torch.inference_mode():
        for dname in dtypes:
            dt = resolve_dtype(dname, "cpu")
            for kind in kinds:
                if kind not in by_kind:
                    raise ActscopeError(
                        f"no projection '{kind}' in this model; it has {', '.join(by_kind)}"
                    )
                if progress is not None:
                    progress(f"{dname} {kind}")
                rows += _bench_kind(
                    kind, by_kind[kind], dt, dname, sparsities, kernels, repeats, warmup, gen
                )
        info = conditions()
    return SpeedResult(pd.DataFrame(rows), info=info)


def _bench_kind(
    kind: str,
    modules: list[nn.Module],
    dt: torch.dtype,
    dname: str,
    sparsities: Sequence[float],
    kernels: Sequence[str],
    repeats: int,
    warmup: int,
    gen: torch.Generator,
) -> list[dict[str, Any]]:
    ws = [linear_params(m)[0].to("cpu", dt).contiguous() for m in modules]
    wts = [transpose_weight(w) for w in ws]
    n = len(ws)
    d_out, d_in = ws[0].shape
    xs = [torch.randn(d_in, generator=gen).to(dt) for _ in range(n)]
    x2 = [x.unsqueeze(0) for x in xs]
    variants: dict[tuple[str, float, str], Callable[[int], Any]] = {
        ("dense", 0.0, "F.linear"): lambda i: F.linear(x2[i], ws[i])
    }
    full = torch.arange(d_in)
    for kname in kernels:
        fn = gemv_kernel(kname)
        variants[("same_kernel_dense", 0.0, kname)] = lambda i, fn=fn: fn(xs[i], full, wts[i])
    for s in sparsities:
        k = d_in - round(s * d_in)
        idx = [torch.randperm(d_in, generator=gen)[:k].sort().values for _ in range(n)]
        xa = [xs[i].index_select(0, idx[i]) for i in range(n)]
        thr = [
            float(xs[i].float().abs().sort().values[d_in - k - 1]) if k < d_in else -1.0
            for i in range(n)
        ]
        for kname in kernels:
            fn = gemv_kernel(kname)
            variants[("kernel", s, kname)] = lambda i, fn=fn, idx=idx, xa=xa: fn(
                xa[i], idx[i], wts[i]
            )
        variants[("select", s, "-")] = lambda i, thr=thr: xs[i].index_select(
            0, (xs[i].float().abs() > thr[i]).nonzero().squeeze(1)
        )
        if kind == "up":
            variants[("kernel", s, "rows")] = lambda i, idx=idx: row_gemv(xs[i], idx[i], ws[i])
    for _ in range(warmup):
        for fn in variants.values():
            sweep_time(fn, n)
    times: dict[tuple[str, float, str], list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            times[key].append(sweep_time(fn, n))
    med = {key: statistics.median(w for w, _ in v) * 1e6 for key, v in times.items()}
    cpu = {key: statistics.median(c for _, c in v) * 1e6 for key, v in times.items()}
    dense = med[("dense", 0.0, "F.linear")]
    dense_cpu = cpu[("dense", 0.0, "F.linear")]
    rows = []
    kern_names = list(kernels) + (["rows"] if kind == "up" else [])
    for s in sparsities:
        sel = med[("select", s, "-")]
        for kname in kern_names:
            kern = med[("kernel", s, kname)]
            sparse_cpu = cpu[("kernel", s, kname)] + cpu[("select", s, "-")]
            same = med.get(("same_kernel_dense", 0.0, kname), float("nan"))
            rows.append(
                {
                    "dtype": dname,
                    "linear": kind,
                    "in": d_in,
                    "out": d_out,
                    "layers": n,
                    "sparsity": s,
                    "kernel": kname,
                    "dense_us": dense,
                    "kernel_us": kern,
                    "select_us": sel,
                    "sparse_us": kern + sel,
                    "same_kernel_dense_us": same,
                    "ideal_us": dense * (1.0 - s),
                    "speedup": dense / (kern + sel),
                    "ideal_speedup": 1.0 / (1.0 - s),
                    "dense_cpu_us": dense_cpu,
                    "sparse_cpu_us": sparse_cpu,
                    "speedup_cpu": dense_cpu / sparse_cpu,
                }
            )
    return rows


# ---- end-to-end decode ----------------------------------------------------------------------
