"""``actscope profile`` and ``actscope compare``."""

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


def register(app: typer.Typer) -> None:
    @app.command("profile", cls=OutCommand)
    def profile_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option(
            "default",
            "--corpus",
            "-c",
            help=CORPUS_HELP,
        ),
        out: Path = out_option(Path("runs/profile")),
        max_tokens: int = typer.Option(
            100_000, "--max-tokens", help="real tokens to read (0 = all)"
        ),
        sites: str = typer.Option("all", "--sites", "-s", help="site patterns, comma-separated"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        bos: str = typer.Option("auto", "--bos", help="auto (tokenizer default), always, never"),
        top_k: int = typer.Option(32, "--top-k", help="top-|a| events kept per site"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
        ray: bool = typer.Option(False, "--ray", help="run shards as Ray tasks and merge"),
        workers: int = typer.Option(2, "--workers", help="Ray workers (with --ray)"),
    ) -> None:
        """Profile activation magnitudes at every site; write tables, exports and report.html."""
        from actscope.analyses.profile import ProfileConfig, profile
        from actscope.data import load_corpus

        cfg = ProfileConfig(
            sites=[s for s in sites.split(",") if s],
            max_tokens=max_tokens or None,
            seq_len=seq_len,
            batch_size=batch_size,
            bos=bos,
            top_k=top_k,
            seed=seed,
        )
        texts = load_corpus(corpus)
        if ray:
            from actscope.distributed import profile_ray
            from actscope.models.loading import model_kind, resolve_device

            model_kind(model)
            resolve_device(device)
            result = profile_ray(
                model, corpus, cfg, workers=workers, out=out, dtype=dtype, device=device
            )
        else:
            lm = load(model, dtype, device)
            with StageBars() as bars:
                result = profile(
                    lm,
                    texts,
                    out=out,
                    config=cfg,
                    progress=bars.advance,
                    on_plan=lambda total: bars.stage("profile", total),
                )
        _print_summary(result)

    @app.command("compare", cls=OutCommand)
    def compare_cmd(
        runs: list[Path] = typer.Argument(..., help="profile run directories"),
        out: Path = out_option(Path("runs/compare")),
    ) -> None:
        """Overlay several profile runs (depth normalised) in one report."""
        from actscope.analyses.profile import compare_runs

        res = compare_runs(list(runs), out=out)
        console.print(res["table"].to_string(index=False))
        print(out / "report.html")


def _print_summary(result: object) -> None:
    s = result.summary  # type: ignore[attr-defined]
    m = result.manifest  # type: ignore[attr-defined]
    g = s.get("global_max", {})
    sun = s["sun_criterion"]
    console.print(
        f"[bold]{s['model']}[/]: {m['tokens']:,} tokens at {m.get('tokens_per_s')} tok/s\n"
        f"  global max |a| = {g.get('abs_value', float('nan')):,.4g} at {g.get('site')} "
        f"(token {g.get('token')!r}, position {g.get('seq_position')}, channel {g.get('channel')})\n"
        f"  Sun's criterion: per-token median {'fires' if sun['fires_per_token_median'] else 'no'}, "
        f"layer median {'fires' if sun['fires_layer_median'] else 'no'}; "
        f"resid_post kurtosis (mean over layers) = "
        f"{s['kurtosis']['resid_post_token_mean_over_layers']:.4g}"
    )
    if s.get("nonfinite_values"):
        console.print(
            f"  [bold red]{s['nonfinite_values']:,} NaN/Inf values[/] were counted and left out "
            "of every statistic (see the sites table's nan, posinf and neginf columns)"
        )
    out = getattr(result, "out", None)
    if out is not None:
        print(Path(out) / "report.html")
