"""``actscope quant``: calibration, per-site sensitivity, co-variation, perplexity, exports.

Flow (every number is computed on the device inside forward passes; only final sums come
back to the host):

1. the corpus is split by :meth:`Corpus.split` into a calibration part and a disjoint
   held-out part; each is tokenized up to its token budget;
2. one probe pass groups the sites that carry the same tensor (:mod:`.groups`);
3. calibration pass: histograms, per-channel max|x|, importance-matrix sums, MSE stash;
   fitting: static per-tensor ranges and MSE clip ratios (:mod:`.calibrate`);
4. sensitivity pass over the held-out batches, every quantizer at every site (:mod:`.sensitivity`);
5. rank correlations of max|x| / kurtosis / crest factor with INT8 per-tensor SQNR (:mod:`.covary`);
6. perplexity on the held-out batches under W8A8, W8A8-static, W4A16, W4A8, then with
   SmoothQuant over the alpha sweep (:mod:`.e2e`).

:func:`analyze_quant` returns a :class:`QuantResult`; :func:`run_quant` also writes the run
directory (manifest, Parquet tables, report.html, exports/imatrix.gguf and
exports/smoothquant_act_scales.pt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from actscope.analyses.quant.calibrate import Calibration, Calibrator
from actscope.analyses.quant.covary import covariation_frame, rank_correlations
from actscope.analyses.quant.e2e import DEFAULT_ALPHAS, DEFAULT_SCHEMES, perplexity_sweep
from actscope.analyses.quant.groups import DEFAULT_SITES, expand_patterns, site_groups
from actscope.analyses.quant.imatrix import ImatrixCollector
from actscope.analyses.quant.sensitivity import SensitivityMeter
from actscope.capture.hooks import StopForward
from actscope.capture.runner import run
from actscope.data import (
    BOS_POLICIES,
    Batch,
    Corpus,
    default_pad_id,
    load_corpus,
    make_batches,
    policy_record,
    tokenize_corpus,
)
from actscope.errors import DataError
from actscope.exports.imatrix import ImatrixEntry
from actscope.interventions.quant.apply import get_scheme
from actscope.interventions.quant.smooth import SmoothingError, folds
from actscope.interventions.quant.spec import GRIDS, QuantSpec, parse_specs
from actscope.utils import checks


class Progress(Protocol):
    """What the analysis reports while it runs (the CLI draws progress bars from it)."""

    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class QuantConfig:
    """Everything that determines a quant run's numbers (recorded in the manifest).

    ``quantizers``: spec names (``int8-sym-tensor-max``...) or None for the ``grid``
    (``default``: 36 quantizers, ``fast``: INT8/INT4 x granularity). ``eval_tokens``: held-out
    tokens read; ``sens_tokens`` / ``ppl_tokens``: the prefix of them used by the sensitivity
    pass / the perplexity sweep (None = all); ``out_tokens``: tokens over which the Linear
    output error is measured (None = all). ``split``: fraction of the corpus used for
    calibration (the rest is held out).
    """

    sites: list[str] = field(default_factory=lambda: list(DEFAULT_SITES))
    quantizers: list[str] | None = None
    grid: str = "default"
    calib_tokens: int = 8192
    eval_tokens: int = 16384
    ppl_tokens: int | None = None
    sens_tokens: int | None = None
    out_tokens: int | None = 4096
    mse_tokens: int = 512
    seq_len: int = 256
    batch_size: int = 8
    split: float = 0.5
    seed: int = 0
    bos: str = "auto"
    schemes: list[str] = field(default_factory=lambda: list(DEFAULT_SCHEMES))
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    sensitivity: bool = True
    e2e: bool = True
    imatrix: bool = True

    def __post_init__(self) -> None:
        """Check sizes, fractions and the BOS policy (names are checked by :meth:`validate`)."""
        self.sites = checks.strings(self.sites, "sites")
        for name in ("calib_tokens", "eval_tokens", "mse_tokens", "seq_len", "batch_size"):
            checks.integer(getattr(self, name), name)
        for name in ("ppl_tokens", "sens_tokens", "out_tokens"):
            if getattr(self, name) is not None:
                checks.integer(getattr(self, name), name)
        checks.number(self.split, "split", 0.0, 1.0, low_open=True, high_open=True)
        checks.one_of(self.bos, "bos", BOS_POLICIES)
        checks.integer(self.seed, "seed", None)
        for a in self.alphas:
            checks.number(a, "SmoothQuant alpha", 0.0, 1.0)

    def validate(self) -> None:
        """Raise on a bad quantizer or scheme name before any work is done."""
        self.specs()
        for s in self.schemes:
            get_scheme(s)

    def specs(self) -> list[QuantSpec]:
        if self.quantizers:
            return parse_specs(self.quantizers)
        if self.grid not in GRIDS:
            raise DataError(f"unknown grid '{self.grid}' (known: {', '.join(GRIDS)})")
        return GRIDS[self.grid]()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuantResult:
    """Tables and statistics of one quant analysis (see :mod:`.run`)."""

    model: str
    sensitivity: pd.DataFrame
    site_stats: pd.DataFrame
    ranges: pd.DataFrame
    correlations: pd.DataFrame
    perplexity: pd.DataFrame | None
    calibration: Calibration
    imatrix: dict[str, ImatrixEntry]
    collector: ImatrixCollector | None
    timings: dict[str, dict[str, float]]
    data: dict[str, Any]


def _batches(
    lm: Any, corpus: Corpus, tokens: int, cfg: QuantConfig
) -> tuple[list[Batch], dict[str, Any]]:
    tok = tokenize_corpus(
        corpus, lm.tokenizer, seq_len=cfg.seq_len, bos=cfg.bos, max_tokens=tokens, seed=cfg.seed
    )  # type: ignore[arg-type]
    if tok.n_tokens == 0:
        raise DataError(f"corpus part {corpus.name!r} produced no tokens")
    pad = default_pad_id(lm.tokenizer)
    batches = list(make_batches(tok, cfg.batch_size, "right", pad))
    return batches, policy_record(
        tok, padding_side="right", pad_id=pad, batch_size=cfg.batch_size, bucket=True
    )


def _take(batches: list[Batch], tokens: int | None) -> list[Batch]:
    if tokens is None:
        return batches
    out, n = [], 0
    for b in batches:
        if n >= tokens:
            break
        out.append(b)
        n += b.n_tokens
    return out


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, dict[str, float]] = {}

    def record(self, stage: str, t0: float, tokens: int = 0) -> None:
        dt = time.perf_counter() - t0
        self.t[stage] = {
            "seconds": round(dt, 3),
            "tokens": tokens,
            "tokens_per_s": round(tokens / dt, 1) if dt > 0 and tokens else 0.0,
        }


def analyze_quant(
    lm: Any,
    corpus: str | Corpus = "default",
    config: QuantConfig | None = None,
    progress: Progress | None = None,
) -> QuantResult:
    """Run the whole analysis on ``lm`` (see the module docstring); writes nothing."""
    cfg = config or QuantConfig()
    cfg.validate()
    specs = cfg.specs()
    corp = load_corpus(corpus) if isinstance(corpus, str) else corpus
    expand_patterns(lm, cfg.sites)  # unknown sites fail before any forward pass
    lm.check_seq_len(cfg.seq_len)
    calib_part, eval_part = corp.split(cfg.split, cfg.seed)
    calib_b, calib_rec = _batches(lm, calib_part, cfg.calib_tokens, cfg)
    eval_b, eval_rec = _batches(lm, eval_part, cfg.eval_tokens, cfg)
    timer = _Timer()

    def bar(stage: str, batches: list[Batch]) -> Callable[[int], None] | None:
        n = sum(b.n_tokens for b in batches)
        if progress is not None:
            progress.stage(stage, n)
            return progress.advance
        return None

    groups = site_groups(lm, expand_patterns(lm, cfg.sites))
    # the perplexity sweep smooths and quantizes every Linear: it needs all their scales
    every_linear = site_groups(lm, expand_patterns(lm, ["linear_in"])) if cfg.e2e else []
    calibrator = Calibrator(
        groups, mse_tokens=cfg.mse_tokens if _needs_mse(specs) else 0, scales_only=every_linear
    )
    collector = ImatrixCollector(lm, groups) if cfg.imatrix else None
    consumers: list[Any] = [calibrator] + ([collector] if collector else [])
    sites = list(dict.fromkeys(calibrator.sites + (collector.sites if collector else [])))
    consumers += final_norm_stopper(sites)
    t0 = time.perf_counter()
    info = run(lm, calib_b, sites, consumers, progress=bar("calibration", calib_b))
    calib = calibrator.fit(specs)
    timer.record("calibration", t0, info.tokens)

    sens = stats = pd.DataFrame()
    if cfg.sensitivity:
        meter = SensitivityMeter(groups, specs, calib, out_tokens=cfg.out_tokens)
        sens_b = _take(eval_b, cfg.sens_tokens)
        t0 = time.perf_counter()
        info = run(
            lm,
            sens_b,
            meter.sites,
            [meter, *final_norm_stopper(meter.sites)],
            progress=bar("sensitivity", sens_b),
        )
        timer.record("sensitivity", t0, info.tokens)
        sens, stats = meter.tables()
        sens["out_tokens"] = meter.out_done
        name = getattr(lm, "name", "model")
        sens.insert(0, "model", name)
        stats.insert(0, "model", name)
    corr = (
        rank_correlations(covariation_frame(sens, stats))
        if len(sens)
        else pd.DataFrame(columns=["model", "scope", "target", "n", "statistic", "rho", "p_value"])
    )
    ppl = None
    if cfg.e2e:
        ppl_b = _take(eval_b, cfg.ppl_tokens)
        n_ppl = sum(b.n_tokens for b in ppl_b)
        t0 = time.perf_counter()
        label = {"done": 0}

        n_runs = 1 + len(cfg.schemes)
        if cfg.alphas and _smoothable(lm):
            n_act = sum(get_scheme(s).act is not None for s in cfg.schemes)
            n_runs += 1 + len(cfg.alphas) * n_act

        def tick(stage: str) -> None:
            if progress is not None:
                if label["done"] == 0:
                    progress.stage("perplexity", n_runs)
                else:
                    progress.advance(1)
            label["done"] += 1

        ppl = perplexity_sweep(
            lm,
            ppl_b,
            calib.act_scales,
            schemes=cfg.schemes,
            alphas=cfg.alphas,
            smoothing=_smoothable(lm),
            progress=tick,
        )
        if progress is not None:
            progress.advance(1)
        timer.record("perplexity", t0, n_ppl * len(ppl))
    ranges = _ranges_frame(calib, specs)
    return QuantResult(
        model=getattr(lm, "name", "model"),
        sensitivity=sens,
        site_stats=stats,
        ranges=ranges,
        correlations=corr,
        perplexity=ppl,
        calibration=calib,
        imatrix=collector.entries() if collector else {},
        collector=collector,
        timings=timer.t,
        data={
            "calibration": calib_rec,
            "evaluation": eval_rec,
            "exact_percentiles": calib.exact,
            "smoothing": "applied" if _smoothable(lm) else "not supported for this family",
        },
    )


class _StopAtFinalNorm:
    """Last consumer of a pass whose last site is ``final_norm``: ends the forward there.

    Every other consumer has seen ``final_norm`` when this one raises, and nothing after it
    is needed, so the LM head (most of the cost of a 262k-vocabulary model) never runs.
    """

    def __call__(self, name: str, value: Any, mask: Any) -> None:
        if name == "final_norm":
            raise StopForward


def final_norm_stopper(sites: list[str]) -> list[Any]:
    """``[consumer]`` ending each forward pass at ``final_norm`` when nothing later is needed."""
    return [_StopAtFinalNorm()] if "final_norm" in sites and "logits" not in sites else []


def _smoothable(lm: Any) -> bool:
    try:
        folds(lm)
    except SmoothingError:
        return False
    return True


def _needs_mse(specs: list[QuantSpec]) -> bool:
    return any(s.clip == "mse" for s in specs)


def _ranges_frame(calib: Calibration, specs: list[QuantSpec]) -> pd.DataFrame:
    rows = []
    keys = set(calib.ranges) | set(calib.ratios)
    for group, spec in sorted(keys):
        r = calib.ranges.get((group, spec))
        rows.append(
            {
                "group": group,
                "quantizer": spec,
                "lo": r.lo if r else float("nan"),
                "hi": r.hi if r else float("nan"),
                "ratio": calib.ratios.get((group, spec), float("nan")),
                "calib_max_abs": calib.abs_max.get(group, float("nan")),
            }
        )
    return pd.DataFrame(rows, columns=["group", "quantizer", "lo", "hi", "ratio", "calib_max_abs"])


def run_quant(
    lm: Any,
    out: str | Path,
    corpus: str | Corpus = "default",
    config: QuantConfig | None = None,
    progress: Progress | None = None,
    argv: dict[str, Any] | None = None,
) -> QuantResult:
    """:func:`analyze_quant`, then write the run directory ``out`` atomically."""
    from actscope.analyses.quant.report import build_report, summary
    from actscope.runs import RunWriter

    cfg = config or QuantConfig()
    with RunWriter(out, "quant", argv or cfg.to_dict()) as w:
        res = analyze_quant(lm, corpus, cfg, progress)
        w.manifest.update(
            {
                "model": lm.describe() if hasattr(lm, "describe") else {"name": res.model},
                "config": cfg.to_dict(),
                "data": res.data,
                "timings": res.timings,
            }
        )
        if len(res.sensitivity):
            w.table("sensitivity", res.sensitivity)
            w.table("site_stats", res.site_stats)
        w.table("ranges", res.ranges)
        w.table("correlations", res.correlations)
        if res.perplexity is not None:
            w.table("perplexity", res.perplexity)
        if res.calibration.act_scales:
            torch.save(res.calibration.act_scales, w.file("exports/smoothquant_act_scales.pt"))
        if res.collector is not None and res.imatrix:
            res.collector.write(
                w.file("exports/imatrix.gguf"),
                datasets=[str(res.data["calibration"]["corpus"])],
                chunk_size=cfg.seq_len,
            )
        w.json("summary.json", summary(res))
        w.text("report.html", build_report(res, cfg).render())
    return res
