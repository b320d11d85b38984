"""``actscope sparsity measure | calibrate | evaluate | bench``: training-free activation sparsity."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from actscope.cli.common import (
    CORPUS_HELP,
    MODEL_HELP,
    OutCommand,
    console,
    load,
    out_option,
    token_progress,
)
from actscope.errors import ActscopeError


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ActscopeError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class _Bar:
    """A rich progress bar fed with ``(stage, done, total)`` or ``(label)`` calls."""

    def __init__(self, title: str) -> None:
        self.progress = token_progress(None, title=title)
        self.tasks: dict[str, Any] = {}
        self.t0: dict[str, float] = {}

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, rate="")
            self.t0[stage] = time.perf_counter()
        rate = done / max(1e-9, time.perf_counter() - self.t0[stage])
        self.progress.update(self.tasks[stage], completed=done, total=total, rate=f"{rate:,.0f}/s")

    def label(self, text: str) -> None:
        if "steps" not in self.tasks:
            self.tasks["steps"] = self.progress.add_task(text, total=None, rate="")
        self.progress.update(self.tasks["steps"], description=text, advance=1)


def register(app: typer.Typer) -> None:
    sp = typer.Typer(
        help="Training-free activation sparsity (TEAL, WINA, CHESS, CETT).", no_args_is_help=True
    )
    app.add_typer(sp, name="sparsity")

    @sp.command("measure", cls=OutCommand)
    def measure_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option("default", "--corpus", "-c", help=CORPUS_HELP),
        out: str = out_option("runs/sparsity-measure"),
        tokens: int = typer.Option(16384, "--tokens", help="real tokens to read"),
        eps: str = typer.Option("1e-3,1e-2", "--eps", help="thresholds for 'below epsilon'"),
        cett: float = typer.Option(0.2, "--cett", help="target CETT for the activation ratio"),
        cett_tokens: int = typer.Option(512, "--cett-tokens", help="tokens per domain for CETT"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """How sparse MODEL already is: zeros, entries below eps, CETT activation ratio."""
        from actscope.analyses.sparsity import measure_run
        from actscope.data import load_corpus

        lm = load(model, dtype, device)
        with _Bar("measure") as bar:
            res = measure_run(
                lm,
                load_corpus(corpus),
                out,
                tokens=tokens,
                eps=_floats(eps, "--eps"),
                cett_target=cett,
                cett_tokens=cett_tokens,
                seq_len=seq_len,
                batch_size=batch_size,
                seed=seed,
                progress=bar.update,
            )
        c = res.cett
        ratio = c[c.domain == "all"].activation_ratio.mean() if not c.empty else float("nan")
        console.print(
            f"[bold]{lm.name}[/]: mean exact-zero fraction "
            f"{res.zeros[res.zeros.domain == 'all'].frac_zero.mean():.4f}, "
            f"MLP activation ratio at CETT {cett:g}: {ratio:.3f}"
        )
        print(Path(out) / "report.html")

    @sp.command("calibrate", cls=OutCommand)
    def calibrate_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option("default", "--corpus", "-c", help=CORPUS_HELP),
        out: str = out_option("runs/sparsity-calibrate"),
        rules: str = typer.Option("teal,wina,chess", "--rules"),
        targets: str = typer.Option("0.25,0.4,0.5,0.65", "--targets"),
        allocation: str = typer.Option(
            "uniform,greedy", "--allocation", help="uniform and/or greedy (TEAL's per-block search)"
        ),
        tokens: int = typer.Option(16384, "--tokens", help="calibration tokens"),
        fraction: float = typer.Option(
            0.5, "--fraction", help="share of the corpus for calibration"
        ),
        seed: int = typer.Option(0, "--seed"),
        greedy_step: float = typer.Option(0.05, "--greedy-step"),
        greedy_tokens: int = typer.Option(512, "--greedy-tokens", help="tokens replayed per block"),
        greedy_rules: str = typer.Option(
            "", "--greedy-rules", help="rules to run the greedy search for (default: all)"
        ),
        refine_tokens: int = typer.Option(
            0,
            "--refine-tokens",
            help="re-threshold every plan once under its own sparsification on this many "
            "tokens (corrects the compounding overshoot; 0 = TEAL's dense calibration)",
        ),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Calibrate thresholds per Linear input; writes OUT/thresholds.json."""
        from actscope.analyses.sparsity import calibrate_run
        from actscope.data import load_corpus

        lm = load(model, dtype, device)
        with _Bar("calibrate") as bar:
            res = calibrate_run(
                lm,
                load_corpus(corpus),
                out,
                rules=_words(rules),
                targets=_floats(targets, "--targets"),
                allocations=_words(allocation),
                tokens=tokens,
                fraction=fraction,
                seed=seed,
                greedy_step=greedy_step,
                greedy_tokens=greedy_tokens,
                greedy_rules=_words(greedy_rules) or None,
                refine_tokens=refine_tokens,
                seq_len=seq_len,
                batch_size=batch_size,
                progress=bar.update,
            )
        console.print(
            f"{len(res.calibration.plans)} plans calibrated on {res.info['tokens']:,} tokens"
        )
        print(Path(out) / "thresholds.json")

    @sp.command("evaluate", cls=OutCommand)
    def evaluate_cmd(
        thresholds: str | None = typer.Option(
            None, "--thresholds", "-t", help="thresholds.json or a calibrate run folder"
        ),
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option("default", "--corpus", "-c", help=CORPUS_HELP),
        out: str = out_option("runs/sparsity-evaluate"),
        rules: str = typer.Option("teal,wina,chess", "--rules"),
        targets: str = typer.Option("0,0.25,0.4,0.5,0.65", "--targets"),
        allocation: str = typer.Option("uniform", "--allocation"),
        prefill_fraction: float = typer.Option(
            1.0,
            "--prefill-fraction",
            help="fraction of each sequence's last tokens that is sparsified (TEAL used 0.5)",
        ),
        topk: bool = typer.Option(
            False, "--topk", help="exact per-token top-k instead of thresholds"
        ),
        tokens: int = typer.Option(16384, "--tokens", help="held-out tokens"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Held-out perplexity for each rule and target sparsity (table and curves)."""
        from actscope.analyses.sparsity import evaluate_run, load_calibration
        from actscope.analyses.sparsity.report import sweep_pivot
        from actscope.data import load_corpus

        cal = load_calibration(thresholds)
        lm = load(model, dtype, device)
        with _Bar("evaluate") as bar:
            res = evaluate_run(
                lm,
                load_corpus(corpus),
                out,
                cal,
                rules=_words(rules),
                targets=_floats(targets, "--targets"),
                allocations=_words(allocation),
                prefill_fraction=prefill_fraction,
                mode="topk" if topk else "threshold",
                tokens=tokens,
                seq_len=seq_len,
                batch_size=batch_size,
                seed=seed,
                progress=bar.update,
            )
        console.print(sweep_pivot(res.table).to_string(index=False, float_format="%.3f"))
        print(Path(out) / "report.html")

    @sp.command("bench", cls=OutCommand)
    def bench_cmd(
        thresholds: str | None = typer.Option(
            None, "--thresholds", "-t", help="thresholds.json or a calibrate run folder"
        ),
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        out: str = out_option("runs/sparsity-bench"),
        rule: str = typer.Option("teal", "--rule"),
        targets: str = typer.Option("0.4,0.5", "--targets"),
        allocation: str = typer.Option("uniform", "--allocation"),
        topk: bool = typer.Option(
            False, "--topk", help="exact per-token top-k instead of thresholds"
        ),
        kernels: str = typer.Option("bag,gather", "--kernels"),
        dtypes: str = typer.Option("bf16,fp32", "--dtypes"),
        new_tokens: int = typer.Option(64, "--new-tokens", help="decode steps per run"),
        repeats: int = typer.Option(3, "--repeats"),
        threads: int = typer.Option(1, "--threads", help="torch threads while timing (0 = leave)"),
        gemv: bool = typer.Option(True, "--gemv/--no-gemv"),
        decode: bool = typer.Option(True, "--decode/--no-decode"),
    ) -> None:
        """Batch-1 decode speed: sparse CPU kernels vs dense, with the ideal line."""
        from actscope.analyses.sparsity import bench_run, load_calibration

        cal = load_calibration(thresholds)
        lm = load(model, "auto", "cpu")
        with _Bar("bench") as bar:
            _g, decodes = bench_run(
                lm,
                out,
                cal,
                rule=rule,
                targets=_floats(targets, "--targets"),
                mode="topk" if topk else "threshold",
                allocation=allocation,
                kernels=_words(kernels),
                dtypes=_words(dtypes),
                new_tokens=new_tokens,
                repeats=repeats,
                n_threads=threads or None,
                gemv=gemv,
                decode=decode,
                progress=bar.label,
            )
        for d in decodes:
            t = d.table[["config", "kernel", "tokens_per_s", "speedup", "ideal_tokens_per_s"]]
            console.print(
                f"[bold]{d.info['dtype']}[/]\n" + t.to_string(index=False, float_format="%.3f")
            )
        print(Path(out) / "report.html")
