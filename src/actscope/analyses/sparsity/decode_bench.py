"""End-to-end batch-1 decode timing: the dense model against its sparse decode path.

A greedy decode loop with a KV cache (the model's own forward) runs the dense model and the
same model with every sparsified Linear replaced by its sparse stand-in
(:meth:`Sparsifier.decode_modules`), configurations interleaved over ``repeats``. Reported:
median ms per decoded token (wall clock and thread CPU time), tokens/s, the realised weight
sparsity of the decode steps, the ideal ``dense_ms (1 - s)`` for the target ``s`` and the
Amdahl bound ``dense_ms - s_w * linear_ms`` (``linear_ms``: time spent in the sparsifiable
Linear layers of a dense step, measured with timing hooks in a separate run), and a numerical
comparison of the sparse path with the masked-dense hooks (see :func:`_numerics`).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import DynamicCache

from actscope.analyses.sparsity.timing import SpeedResult, conditions, threads
from actscope.interventions.sparsify import Sparsifier
from actscope.interventions.sparsify_rules import block_weights
from actscope.kernels.sparse_linear import RowSparseLinear, SparseLinear
from actscope.kernels.swap import swapped_modules


@dataclass
class DecodeTrace:
    """What :func:`decode_steps` produced: tokens, per-step wall/CPU seconds, logits."""

    tokens: list[int]
    wall: list[float]
    cpu: list[float]
    logits: list[Tensor]


def decode_steps(
    model: nn.Module,
    prompt: Tensor,
    steps: int,
    forced: Sequence[int] | None = None,
    keep_logits: bool = False,
) -> DecodeTrace:
    """Greedy batch-1 decode with a KV cache, ``steps`` single-token forward passes.

    Each step is timed in wall-clock and thread-CPU seconds. With ``forced`` the given tokens
    are fed instead of the argmax (teacher forcing), so two paths see identical inputs.
    """
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    nxt = int(out.logits[0, -1].argmax()) if forced is None else int(forced[0])
    trace = DecodeTrace([nxt], [], [], [])
    for i in range(steps):
        ids = torch.tensor([[nxt]], device=prompt.device)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = model(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)
        row = out.logits[0, -1]
        nxt = int(row.argmax()) if forced is None else int(forced[min(i + 1, len(forced) - 1)])
        trace.wall.append(time.perf_counter() - t0)
        trace.cpu.append(time.thread_time() - c0)
        trace.tokens.append(nxt)
        if keep_logits:
            trace.logits.append(row.float().clone())
    return trace


class _LinearTimer:
    """Forward pre/post hooks adding up the wall and thread-CPU time spent in some modules.

    On CUDA each hook synchronises first: kernels are queued asynchronously, so without it
    the wall time would be the launch time only, not the modules' work.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._t0 = (0.0, 0.0)
        self._cuda = any(p.is_cuda for m in modules for p in m.parameters())
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._start))
            self.handles.append(m.register_forward_hook(self._stop))

    def _start(self, *args: Any) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        self._t0 = (time.perf_counter(), time.thread_time())

    def _stop(self, *args: Any) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        self.wall += time.perf_counter() - self._t0[0]
        self.cpu += time.thread_time() - self._t0[1]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def decode_weight_sparsity(lm: Any, replaced: dict[str, nn.Module]) -> float:
    """Skipped / all Linear weights of the decoder blocks over the single-row calls so far."""
    skipped = 0.0
    for m in replaced.values():
        if isinstance(m, SparseLinear | RowSparseLinear) and m.seen:
            skipped += m.sparsity * m.in_features * m.out_features
    total = sum(block_weights(lm).values())
    return skipped / total if total else float("nan")


def decode_benchmark(
    lm: Any,
    configs: dict[str, tuple[Sparsifier, float]],
    *,
    prompt: Tensor,
    new_tokens: int = 64,
    repeats: int = 3,
    kernel: str = "bag",
    n_threads: int | None = 1,
    check_numerics: bool = True,
    progress: Callable[[str], None] | None = None,
) -> SpeedResult:
    """Dense vs sparse decode tokens/s; ``configs`` maps a label to (sparsifier, target)."""
    model = lm.model
    prompt = prompt.to(lm.device).reshape(1, -1)
    tick = progress or (lambda label: None)
    with threads(n_threads), torch.inference_mode():
        replaced = {label: sp.decode_modules(kernel) for label, (sp, _) in configs.items()}
        labels = ["dense", *configs]
        wall: dict[str, list[float]] = {label: [] for label in labels}
        cpu: dict[str, list[float]] = {label: [] for label in labels}

        def once(label: str, steps: int) -> DecodeTrace:
            if label == "dense":
                return decode_steps(model, prompt, steps)
            with swapped_modules(model, replaced[label]):
                return decode_steps(model, prompt, steps)

        for label in labels:  # warm-up, not recorded
            tick(f"warm-up {label}")
            once(label, min(4, new_tokens))
        for mods in replaced.values():
            for m in mods.values():
                if isinstance(m, SparseLinear | RowSparseLinear):
                    m.kept = m.seen = 0
        reference: list[int] = []
        for r in range(repeats):
            for label in labels:
                tick(f"repeat {r + 1}/{repeats} {label}")
                tr = once(label, new_tokens)
                wall[label] += tr.wall
                cpu[label] += tr.cpu
                if label == "dense" and not reference:
                    reference = tr.tokens
        lin_wall, lin_cpu = _dense_linear_ms(lm, prompt, new_tokens, configs)
        dense = _Times(
            statistics.median(wall["dense"]) * 1e3, statistics.median(cpu["dense"]) * 1e3
        )
        rows = [_decode_row("dense", 0.0, dense, dense, 0.0, (lin_wall, lin_cpu), kernel)]
        for label, (_sp, target) in configs.items():
            t = _Times(statistics.median(wall[label]) * 1e3, statistics.median(cpu[label]) * 1e3)
            sw = decode_weight_sparsity(lm, replaced[label])
            rows.append(_decode_row(label, target, t, dense, sw, (lin_wall, lin_cpu), kernel))
        numerics = (
            _numerics(lm, configs, replaced, prompt, reference, kernel)
            if check_numerics and reference
            else pd.DataFrame()
        )
        info = {
            **conditions(),
            "new_tokens": new_tokens,
            "repeats": repeats,
            "prompt_tokens": int(prompt.shape[1]),
            "kernel": kernel,
            "dtype": str(lm.dtype).replace("torch.", ""),
        }
    return SpeedResult(pd.DataFrame(rows), numerics, info)


@dataclass(frozen=True)
class _Times:
    wall_ms: float
    cpu_ms: float


def _dense_linear_ms(
    lm: Any, prompt: Tensor, steps: int, configs: dict[str, tuple[Sparsifier, float]]
) -> tuple[float, float]:
    """Median (wall, CPU) ms per dense step spent in the Linear layers the configs sparsify."""
    paths: set[str] = set()
    for sp, _ in configs.values():
        paths |= set(sp.decode_modules_paths())
    timer = _LinearTimer([lm.model.get_submodule(p) for p in sorted(paths)])
    walls, cpus = [], []
    try:
        cache = DynamicCache(config=lm.model.config)
        out = lm.model(input_ids=prompt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            timer.wall = timer.cpu = 0.0
            out = lm.model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            walls.append(timer.wall)
            cpus.append(timer.cpu)
    finally:
        timer.remove()
    if not walls:
        return float("nan"), float("nan")
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def _decode_row(
    label: str,
    target: float,
    t: _Times,
    dense: _Times,
    sw: float,
    linear_ms: tuple[float, float],
    kernel: str,
) -> dict[str, Any]:
    sparse = label != "dense"
    return {
        "config": label,
        "path": "sparse" if sparse else "dense",
        "kernel": kernel if sparse else "F.linear",
        "target": target,
        "decode_weight_sparsity": sw,
        "ms_per_token": t.wall_ms,
        "tokens_per_s": 1e3 / t.wall_ms,
        "speedup": dense.wall_ms / t.wall_ms,
        "ideal_ms": dense.wall_ms * (1.0 - target),
        "ideal_tokens_per_s": 1e3 / (dense.wall_ms * (1.0 - target)),
        "amdahl_ms": dense.wall_ms - sw * linear_ms[0],
        "dense_linear_ms": linear_ms[0],
        "cpu_ms_per_token": t.cpu_ms,
        "speedup_cpu": dense.cpu_ms / t.cpu_ms,
        "ideal_cpu_ms": dense.cpu_ms * (1.0 - target),
        "amdahl_cpu_ms": dense.cpu_ms - sw * linear_ms[1],
        "dense_linear_cpu_ms": linear_ms[1],
    }


def _one_step_logits(
    model: nn.Module, prompt: Tensor, tokens: Sequence[int]
) -> tuple[list[Tensor], list[Any]]:
    """Teacher-forced decode keeping the logits and a copy of the KV cache before each step."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    logits, snaps = [], []
    for tok in tokens:
        snaps.append(copy.deepcopy(out.past_key_values))
        ids = torch.tensor([[tok]], device=prompt.device)
        out = model(input_ids=ids, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1].float().clone())
    return logits, snaps


def _numerics(
    lm: Any,
    configs: dict[str, tuple[Sparsifier, float]],
    replaced: dict[str, dict[str, nn.Module]],
    prompt: Tensor,
    reference: list[int],
    kernel: str,
) -> pd.DataFrame:
    """Sparse path vs masked-dense hooks, per step from the same state and free running.

    *One step*: at every step the sparse path starts from a copy of the masked-dense KV cache
    and the same input token, so the difference is that of one forward pass. *Teacher forced*:
    both paths decode the same tokens but keep their own caches; threshold rules are
    discontinuous, so an input entry that rounding puts on the other side of its threshold
    changes the cache for good and the two runs drift apart (expected, not a kernel error).
    """
    rows = []
    model = lm.model
    tokens = reference[:-1]
    for label, (sp, target) in configs.items():
        with sp:
            masked, snaps = _one_step_logits(model, prompt, tokens)
        one_step = []
        with swapped_modules(model, replaced[label]):
            for tok, snap in zip(tokens, snaps, strict=True):
                ids = torch.tensor([[tok]], device=prompt.device)
                out = model(input_ids=ids, past_key_values=snap, use_cache=True)
                one_step.append(out.logits[0, -1].float())
            forced = decode_steps(model, prompt, len(tokens), reference, keep_logits=True).logits
        step_diff = [float((a - b).abs().max()) for a, b in zip(masked, one_step, strict=True)]
        rows.append(
            {
                "config": label,
                "target": target,
                "kernel": kernel,
                "steps": len(tokens),
                "max_abs_logit": max(float(a.abs().max()) for a in masked),
                "one_step_median_abs_diff": statistics.median(step_diff),
                "one_step_max_abs_diff": max(step_diff),
                "one_step_argmax_agreement": _agree(masked, one_step),
                "forced_max_abs_diff": max(
                    float((a - b).abs().max()) for a, b in zip(masked, forced, strict=True)
                ),
                "forced_argmax_agreement": _agree(masked, forced),
            }
        )
    return pd.DataFrame(rows)


def _agree(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return sum(int(x.argmax() == y.argmax()) for x, y in zip(a, b, strict=True)) / max(len(a), 1)
