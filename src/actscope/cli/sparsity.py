"""``actscope sparsity measure | calibrate | evaluate | bench``: training-free activation sparsity."""

from __future__ import annotations

from pathlib import Path

import typer

from actscope.cli.common import (
    CORPUS_HELP,
    MODEL_HELP,
    OutCommand,
    StageBars,
    console,
    load,
    out_option,
)
from actscope.utils import checks


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


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

        checks.integer(tokens, "--tokens")
        texts = load_corpus(corpus)
        lm = load(model, dtype, device)
        with StageBars("measure") as bar:
            res = measure_run(
                lm,
                texts,
                out,
                tokens=tokens,
                eps=checks.parse_list(eps, "--eps", float),
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
        from actscope.analyses.sparsity.calibrate import check_options
        from actscope.data import load_corpus

        check_options(
            _words(rules), checks.parse_list(targets, "--targets", float), _words(allocation)
        )
        checks.integer(tokens, "--tokens")
        texts = load_corpus(corpus)
        lm = load(model, dtype, device)
        with StageBars("calibrate") as bar:
            res = calibrate_run(
                lm,
                texts,
                out,
                rules=_words(rules),
                targets=checks.parse_list(targets, "--targets", float),
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

        checks.number(prefill_fraction, "--prefill-fraction", 0.0, 1.0, low_open=True)
        cal = load_calibration(thresholds)
        checks.integer(tokens, "--tokens")
        texts = load_corpus(corpus)
        lm = load(model, dtype, device)
        with StageBars("evaluate") as bar:
            res = evaluate_run(
                lm,
                texts,
                out,
                cal,
                rules=_words(rules),
                targets=checks.parse_list(targets, "--targets", float),
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
        from actscope.analyses.sparsity.runs import check_bench_options

        check_bench_options(
            rule,
            checks.parse_list(targets, "--targets", float),
            allocation,
            _words(kernels),
            _words(dtypes),
            new_tokens,
            repeats,
        )
        cal = load_calibration(thresholds)
        lm = load(model, "auto", "cpu")
        with StageBars("bench") as bar:
            _g, decodes = bench_run(
                lm,
                out,
                cal,
                rule=rule,
                targets=checks.parse_list(targets, "--targets", float),
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
