"""The four sparsity commands as API calls that write run directories (see actscope.runs).

Every call writes ``OUT/manifest.json``, ``summary.json``, ``tables/*.parquet`` and
``report.html`` atomically; :func:`calibrate_run` also writes ``thresholds.json`` (read by
:func:`evaluate_run`, :func:`bench_run` and :meth:`Sparsifier.from_plan`).

Calibration and evaluation use the two disjoint parts of ``corpus.split(fraction, seed)``:
part 0 calibrates, part 1 is held out. The thresholds file records the split; evaluating on the
same corpus uses its part 1 automatically, any other corpus is used whole.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from actscope.analyses.sparsity.calibrate import CalibrationResult, calibrate, check_options
from actscope.analyses.sparsity.data import corpus_part, token_batches
from actscope.analyses.sparsity.decode_bench import decode_benchmark
from actscope.analyses.sparsity.evaluate import SweepResult, sparsity_sweep
from actscope.analyses.sparsity.gemv_bench import gemv_benchmark
from actscope.analyses.sparsity.measure import ALL, MeasureResult, measure_sparsity
from actscope.analyses.sparsity.report import (
    bench_report,
    calibrate_report,
    evaluate_report,
    measure_report,
    sweep_pivot,
    wina_vs_teal,
)
from actscope.analyses.sparsity.timing import SpeedResult
from actscope.data.corpus import Corpus
from actscope.errors import ActscopeError
from actscope.interventions.sparsify import Sparsifier
from actscope.interventions.sparsify_plan import SparsityCalibration
from actscope.kernels.sparse_gemv import gemv_kernel
from actscope.models.loading import resolve_dtype
from actscope.runs import RunWriter
from actscope.utils import checks

Progress = Callable[[str, int, int], None]


def _model_info(lm: Any) -> dict[str, Any]:
    d = lm.describe()
    return {k: d.get(k) for k in ("name", "source", "file_hash", "family", "dtype", "device")}


def _tick(progress: Progress | None, stage: str, total: int) -> Callable[[int], None]:
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(stage, done[0], total)

    return advance


def measure_run(
    lm: Any,
    corpus: Corpus,
    out: str | os.PathLike[str],
    *,
    tokens: int = 16384,
    seq_len: int = 256,
    batch_size: int = 8,
    eps: Sequence[float] = (1e-3, 1e-2),
    cett_target: float = 0.2,
    cett_tokens: int = 512,
    seed: int = 0,
    progress: Progress | None = None,
) -> MeasureResult:
    """``sparsity measure``: natural zeros, below-eps fractions and CETT ratios per domain."""
    args = {
        "tokens": tokens,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "eps": list(eps),
        "cett_target": cett_target,
        "cett_tokens": cett_tokens,
        "seed": seed,
    }
    writer = RunWriter(out, "sparsity measure", args)  # its clock starts now
    data = token_batches(
        lm, corpus, tokens=tokens, seq_len=seq_len, batch_size=batch_size, seed=seed
    )
    res = measure_sparsity(
        lm,
        data,
        eps=eps,
        cett_target=cett_target,
        cett_tokens=cett_tokens,
        seed=seed,
        progress=_tick(progress, "measure", data.n_tokens),
    )
    with writer as w:
        w.manifest.update(
            model=lm.describe(),
            data=data.record,
            tokens=res.info["tokens"],
            tokens_per_s=round(res.info["tokens"] / max(res.info["seconds"], 1e-9), 1),
        )
        w.table("zeros", res.zeros)
        w.table("cett", res.cett)
        allz = res.zeros[res.zeros.domain == ALL]
        allc = res.cett[res.cett.domain == ALL]
        w.json(
            "summary.json",
            {
                "model": lm.name,
                "mean_frac_zero": float(allz.frac_zero.mean()) if not allz.empty else None,
                "mean_activation_ratio": float(allc.activation_ratio.mean())
                if not allc.empty
                else None,
                "cett_target": cett_target,
                "activation_ratio_by_domain": res.cett.groupby("domain")
                .activation_ratio.mean()
                .to_dict(),
            },
        )
        w.text("report.html", measure_report(res, _model_info(lm)).render())
    return res


def calibrate_run(
    lm: Any,
    corpus: Corpus,
    out: str | os.PathLike[str],
    *,
    rules: Sequence[str] = ("teal", "wina", "chess"),
    targets: Sequence[float] = (0.25, 0.4, 0.5, 0.65),
    allocations: Sequence[str] = ("uniform", "greedy"),
    tokens: int = 16384,
    fraction: float = 0.5,
    seed: int = 0,
    seq_len: int = 256,
    batch_size: int = 8,
    greedy_step: float = 0.05,
    greedy_tokens: int = 512,
    greedy_rules: Sequence[str] | None = None,
    refine_tokens: int = 0,
    progress: Progress | None = None,
) -> CalibrationResult:
    """``sparsity calibrate``: thresholds from part 0 of the split; writes thresholds.json."""
    args = {
        "rules": list(rules),
        "targets": list(targets),
        "allocations": list(allocations),
        "tokens": tokens,
        "fraction": fraction,
        "seed": seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "greedy_step": greedy_step,
        "greedy_tokens": greedy_tokens,
        "greedy_rules": None if greedy_rules is None else list(greedy_rules),
        "refine_tokens": refine_tokens,
    }
    check_options(rules, targets, allocations)
    part = corpus_part(corpus, fraction, seed, 0)
    writer = RunWriter(out, "sparsity calibrate", args)
    data = token_batches(lm, part, tokens=tokens, seq_len=seq_len, batch_size=batch_size, seed=seed)
    corpus_info = {
        "corpus": corpus.name,
        "corpus_hash": corpus.hash,
        "fraction": fraction,
        "seed": seed,
        "part": 0,
        "seq_len": seq_len,
    }
    res = calibrate(
        lm,
        data,
        rules=rules,
        targets=targets,
        allocations=allocations,
        greedy_step=greedy_step,
        greedy_tokens=greedy_tokens,
        greedy_rules=greedy_rules,
        refine_tokens=refine_tokens,
        model_info=_model_info(lm),
        corpus_info=corpus_info,
        progress=progress,
    )
    with writer as w:
        w.manifest.update(model=lm.describe(), data=data.record, tokens=data.n_tokens)
        res.calibration.save(w.file("thresholds.json"))
        w.table("thresholds", res.thresholds)
        if not res.greedy.empty:
            w.table("greedy_path", res.greedy)
        w.json(
            "summary.json",
            {
                "model": lm.name,
                "tokens": data.n_tokens,
                "plans": [
                    {
                        "rule": p.rule,
                        "allocation": p.allocation,
                        "target": p.target,
                        "expected_weight_sparsity": p.expected_weight_sparsity,
                    }
                    for p in res.calibration.plans
                ],
            },
        )
        w.text("report.html", calibrate_report(res, _model_info(lm)).render())
    return res


def held_out_part(
    corpus: Corpus, calibration: SparsityCalibration
) -> tuple[Corpus, dict[str, Any]]:
    """Part 1 of the calibration split when ``corpus`` is the calibrated corpus, else all of it."""
    cal = calibration.calibration
    if cal.get("corpus_hash") == corpus.hash and "fraction" in cal:
        part = corpus_part(corpus, float(cal["fraction"]), int(cal.get("seed", 0)), 1)
        return part, {
            "held_out": "split part 1",
            "fraction": cal["fraction"],
            "seed": cal.get("seed"),
        }
    return corpus, {"held_out": "whole corpus (not the calibration corpus)"}


def evaluate_run(
    lm: Any,
    corpus: Corpus,
    out: str | os.PathLike[str],
    calibration: SparsityCalibration | None,
    *,
    rules: Sequence[str] = ("teal", "wina", "chess"),
    targets: Sequence[float] = (0.0, 0.25, 0.4, 0.5, 0.65),
    allocations: Sequence[str] = ("uniform",),
    prefill_fraction: float = 1.0,
    mode: str = "threshold",
    tokens: int = 16384,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    progress: Progress | None = None,
) -> SweepResult:
    """``sparsity evaluate``: held-out perplexity table and curves for every configuration."""
    if calibration is not None:
        calibration.check_model(lm.name, _n_layers(lm), lm.file_hash)
        part, split = held_out_part(corpus, calibration)
    else:
        part, split = corpus, {"held_out": "whole corpus (no calibration file)"}
    args = {
        "rules": list(rules),
        "targets": list(targets),
        "allocations": list(allocations),
        "prefill_fraction": prefill_fraction,
        "mode": mode,
        "tokens": tokens,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seed": seed,
        **split,
    }
    writer = RunWriter(out, "sparsity evaluate", args)
    data = token_batches(lm, part, tokens=tokens, seq_len=seq_len, batch_size=batch_size, seed=seed)
    combos = (
        len(
            {
                (p.rule, p.allocation)
                for p in calibration.plans
                if p.rule in rules and p.allocation in allocations
            }
        )
        if mode == "threshold" and calibration is not None
        else len(rules)
    )
    total = (1 + combos * len([t for t in targets if t > 0])) * data.n_tokens
    done = [0]

    def tick(label: str, n: int) -> None:
        done[0] += n
        if progress is not None:
            progress("perplexity", done[0], total)

    res = sparsity_sweep(
        lm,
        data,
        calibration,
        rules=rules,
        targets=targets,
        allocations=allocations,
        prefill_fraction=prefill_fraction,
        mode=mode,
        progress=tick,
    )
    with writer as w:
        w.manifest.update(
            model=lm.describe(),
            data=data.record,
            tokens=data.n_tokens,
            prefill_fraction=prefill_fraction,
            calibration=None if calibration is None else calibration.calibration,
        )
        w.table("perplexity", res.table)
        if not res.units.empty:
            w.table("units", res.units)
        w.json(
            "summary.json",
            {
                "model": lm.name,
                "tokens": data.n_tokens,
                "prefill_fraction": prefill_fraction,
                "mode": mode,
                "dense_ppl": res.info["dense_ppl"],
                "ppl": sweep_pivot(res.table).to_dict(orient="records"),
                "note": wina_vs_teal(res.table) if {"teal", "wina"} <= set(rules) else "",
            },
        )
        w.text("report.html", evaluate_report(res, _model_info(lm)).render())
    return res


def _n_layers(lm: Any) -> int:
    from actscope.capture.trace import sitemap_of

    return sitemap_of(lm).n_layers


def bench_sparsifiers(
    lm: Any,
    calibration: SparsityCalibration | None,
    rule: str,
    targets: Sequence[float],
    mode: str,
    allocation: str = "uniform",
) -> dict[str, tuple[Sparsifier, float]]:
    """One sparsifier per target, labelled ``rule@target``, for :func:`decode_benchmark`."""
    out: dict[str, tuple[Sparsifier, float]] = {}
    for t in targets:
        if not 0.0 < t < 1.0:
            raise ActscopeError(f"benchmark targets must lie in (0, 1), got {t}")
        if mode == "topk":
            chess = calibration.chess_tensors() if calibration is not None else None
            sp = Sparsifier.exact_topk(lm, rule, t, chess_up_sq=chess, record=False)
        elif calibration is None:
            raise ActscopeError(
                "threshold mode needs a thresholds file; pass --thresholds or --topk"
            )
        else:
            sp = Sparsifier.from_plan(
                lm, calibration.plan(rule, t, allocation), calibration, record=False
            )
        out[f"{rule}@{t:g}"] = (sp, float(t))
    return out


def _as_dtype(lm: Any, dtype: str) -> Any:
    dt = resolve_dtype(dtype, "cpu")
    if dt == lm.dtype:
        return lm
    model = copy.deepcopy(lm.model).to(dt)
    object.__setattr__(model, "_actscope_sitemap", None)
    return dataclasses.replace(lm, model=model)


def check_bench_options(
    rule: str,
    targets: Sequence[float],
    allocation: str,
    kernels: Sequence[str],
    dtypes: Sequence[str],
    new_tokens: int,
    repeats: int,
) -> None:
    """Refuse bench options that cannot run, before the model is loaded."""
    check_options([rule], targets, [allocation])
    for name in kernels:
        gemv_kernel(name)
    for dt in dtypes:
        resolve_dtype(dt, "cpu")
    checks.integer(new_tokens, "--new-tokens")
    checks.integer(repeats, "--repeats")


def bench_run(
    lm: Any,
    out: str | os.PathLike[str],
    calibration: SparsityCalibration | None,
    *,
    rule: str = "teal",
    targets: Sequence[float] = (0.4, 0.5),
    mode: str = "threshold",
    allocation: str = "uniform",
    kernels: Sequence[str] = ("bag", "gather"),
    dtypes: Sequence[str] = ("bf16", "fp32"),
    gemv: bool = True,
    decode: bool = True,
    new_tokens: int = 64,
    repeats: int = 3,
    gemv_repeats: int = 7,
    n_threads: int | None = 1,
    prompt: str = "The history of the printing press begins",
    progress: Callable[[str], None] | None = None,
) -> tuple[SpeedResult | None, list[SpeedResult]]:
    """``sparsity bench``: per-layer GEMV and end-to-end decode, dense vs sparse, same run."""
    check_bench_options(rule, targets, allocation, kernels, dtypes, new_tokens, repeats)
    checks.integer(gemv_repeats, "gemv repeats")
    if calibration is not None:
        calibration.check_model(lm.name, _n_layers(lm), lm.file_hash)
    args = {
        "rule": rule,
        "targets": list(targets),
        "mode": mode,
        "allocation": allocation,
        "kernels": list(kernels),
        "dtypes": list(dtypes),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "gemv_repeats": gemv_repeats,
        "threads": n_threads,
        "prompt": prompt,
    }
    writer = RunWriter(out, "sparsity bench", args)
    g = None
    if gemv:
        g = gemv_benchmark(
            lm,
            sparsities=sorted({0.25, 0.4, 0.5, 0.65, *targets}),
            dtypes=dtypes,
            kernels=kernels,
            repeats=gemv_repeats,
            n_threads=n_threads,
            progress=progress,
        )
    decodes: list[SpeedResult] = []
    if decode:
        ids = torch.tensor(lm.tokenizer(prompt)["input_ids"], dtype=torch.long)
        for dt in dtypes:
            lmd = _as_dtype(lm, dt)
            configs = bench_sparsifiers(lmd, calibration, rule, targets, mode, allocation)
            for kern in kernels:
                decodes.append(
                    decode_benchmark(
                        lmd,
                        configs,
                        prompt=ids,
                        new_tokens=new_tokens,
                        repeats=repeats,
                        kernel=kern,
                        n_threads=n_threads,
                        progress=progress,
                    )
                )
            del lmd
    with writer as w:
        w.manifest.update(model=lm.describe(), masked_dense_timed=False)
        if g is not None:
            w.table("gemv", g.table)
        for d in decodes:
            tag = f"{d.info['dtype']}_{d.info['kernel']}"
            w.table(f"decode_{tag}", d.table)
            if not d.numerics.empty:
                w.table(f"numerics_{tag}", d.numerics)
        w.json("summary.json", _bench_summary(lm, g, decodes))
        w.text("report.html", bench_report(g, decodes, _model_info(lm)).render())
    return g, decodes


def _bench_summary(lm: Any, g: SpeedResult | None, decodes: list[SpeedResult]) -> dict[str, Any]:
    summary: dict[str, Any] = {"model": lm.name, "decode": [], "gemv": []}
    for d in decodes:
        for r in d.table.to_dict(orient="records"):
            summary["decode"].append(
                {
                    "dtype": d.info["dtype"],
                    **{
                        k: r[k]
                        for k in (
                            "config",
                            "kernel",
                            "target",
                            "decode_weight_sparsity",
                            "tokens_per_s",
                            "speedup",
                            "ideal_tokens_per_s",
                        )
                    },
                }
            )
    if g is not None and not g.table.empty:
        t = g.table
        for (dt, kern, s), grp in t.groupby(["dtype", "kernel", "sparsity"]):
            summary["gemv"].append(
                {
                    "dtype": dt,
                    "kernel": kern,
                    "sparsity": s,
                    "sum_dense_us": float(grp.dense_us.sum()),
                    "sum_sparse_us": float(grp.sparse_us.sum()),
                    "speedup": float(grp.dense_us.sum() / grp.sparse_us.sum()),
                    "ideal_speedup": 1.0 / (1.0 - s),
                }
            )
    summary["loadavg_1m"] = None if g is None else g.info.get("loadavg_1m")
    summary["finite"] = all(math.isfinite(x["tokens_per_s"]) for x in summary["decode"])
    return summary


def load_calibration(path: str | os.PathLike[str] | None) -> SparsityCalibration | None:
    """Read a thresholds file (or a calibrate run directory); None passes through."""
    return None if path is None else SparsityCalibration.load(Path(path))
