"""``actscope lens``: logit lens per layer, and a tuned lens fitted on a corpus on request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from actscope.cli.common import MODEL_HELP, OutCommand, console, load, out_option
from actscope.utils import checks

LENS_OUT = Path("runs/lens")


def register(app: typer.Typer) -> None:
    @app.command("lens", cls=OutCommand)
    def lens_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        prompts: str = typer.Option(
            "facts",
            "--prompts",
            "-p",
            help="shipped prompt set (facts) or a .jsonl with prompt/target",
        ),
        out: Annotated[Path, out_option(help="run directory to write")] = LENS_OUT,
        tuned: bool = typer.Option(False, "--tuned", help="also fit and apply a tuned lens"),
        tuned_from: str = typer.Option(
            "", "--tuned-from", help="reuse a saved tuned_lens.safetensors"
        ),
        corpus: str = typer.Option(
            "default", "--corpus", "-c", help="corpus for the tuned-lens fit"
        ),
        fit_tokens: int = typer.Option(16384, "--fit-tokens", help="corpus tokens for the fit"),
        eval_tokens: int = typer.Option(
            256, "--eval-tokens", help="held-out tokens for the KL check (0 = skip)"
        ),
        ridge: float = typer.Option(
            1e-3, "--ridge", help="ridge strength relative to mean feature power"
        ),
        limit: int = typer.Option(0, "--limit", "-n", help="use the first N prompts (0 = all)"),
        seq_len: int = typer.Option(128, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 (default), bf16, auto"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Rank and probability of each prompt's target token across depth."""
        from actscope.analyses.explain.lens import TunedLens
        from actscope.analyses.explain.study_lens import (
            corpus_batches,
            lens_study,
            load_prompts,
            summary,
            write_run,
        )
        from actscope.capture.trace import sitemap_of
        from actscope.data import load_corpus

        checks.integer(limit, "--limit", 0)
        checks.integer(fit_tokens, "--fit-tokens")
        checks.integer(eval_tokens, "--eval-tokens", 0)
        checks.integer(seq_len, "--seq-len")
        checks.integer(batch_size, "--batch-size")
        checks.number(ridge, "--ridge", 0.0)
        texts, targets = load_prompts(prompts, limit or None)
        given = TunedLens.load(tuned_from) if tuned_from else None
        use_tuned = tuned or given is not None
        if (use_tuned and given is None) or eval_tokens > 0:
            load_corpus(corpus)
        t0 = time.perf_counter()
        lm = load(model, dtype, device)
        if given is not None:
            given.check_fits(sitemap_of(lm))
        lm.check_seq_len(seq_len)
        fit = None
        if use_tuned and given is None:
            with console.status(f"fitting the tuned lens on {fit_tokens} tokens ..."):
                fit = corpus_batches(lm, corpus, 0, fit_tokens, seq_len, batch_size, seed)
        held = None
        if eval_tokens > 0:
            held = corpus_batches(lm, corpus, 1, eval_tokens, seq_len, batch_size, seed)
        with console.status("running the lens ..."):
            st = lens_study(
                lm,
                texts,
                targets,
                tuned=given,
                fit_batches=fit,
                eval_batches=held,
                ridge=ridge,
                eval_tokens=eval_tokens,
            )
        args = {
            "model": model,
            "prompts": prompts,
            "tuned": use_tuned,
            "tuned_from": tuned_from,
            "corpus": corpus,
            "fit_tokens": fit_tokens,
            "eval_tokens": eval_tokens,
            "ridge": ridge,
            "limit": limit,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "seed": seed,
            "dtype": dtype,
            "device": device,
        }
        write_run(st, out, args, lm.describe(), time.perf_counter() - t0)
        s = summary(st)
        for lens in ("logit", "tuned"):
            if lens in s:
                console.print(
                    f"[bold]{lens} lens[/]: median target rank 0 from depth "
                    f"{s[lens]['first_depth_median_rank_0']}; top-1 at the last depth "
                    f"{s[lens]['top1_by_depth'][-1]:.2f}"
                )
        print(out / "report.html")
