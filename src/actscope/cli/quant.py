"""``actscope quant``, ``actscope covary`` and ``actscope imatrix``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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

QUANT_OUT = Path("runs/quant")
COVARY_OUT = Path("runs/covary")
IMATRIX_OUT = Path("imatrix.gguf")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    @app.command("quant", cls=OutCommand)
    def quant_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option("default", "--corpus", "-c", help=CORPUS_HELP),
        out: Annotated[Path, out_option(help="run directory")] = QUANT_OUT,
        sites: str = typer.Option(
            "linear_in,embed,resid_mid,resid_post,final_norm",
            "--sites",
            "-s",
            help="site patterns; linear_in = every Linear input",
        ),
        grid: str = typer.Option("default", "--grid", help="default (36 quantizers) or fast (8)"),
        quantizers: str = typer.Option(
            "",
            "--quantizers",
            "-q",
            help="explicit quantizers, e.g. int8-sym-tensor-max,int4-asym-group128-p99.9",
        ),
        calib_tokens: int = typer.Option(8192, "--calib-tokens", help="calibration tokens"),
        eval_tokens: int = typer.Option(16384, "--eval-tokens", help="held-out tokens"),
        ppl_tokens: int = typer.Option(
            0, "--ppl-tokens", help="perplexity tokens (0 = all held out)"
        ),
        sens_tokens: int = typer.Option(
            0, "--sens-tokens", help="sensitivity-pass tokens (0 = all held out)"
        ),
        out_tokens: int = typer.Option(
            4096, "--out-tokens", help="Linear output-error tokens (0 = all)"
        ),
        mse_tokens: int = typer.Option(
            512, "--mse-tokens", help="rows used by the MSE clip search"
        ),
        schemes: str = typer.Option("W8A8,W8A8-static,W4A16,W4A8", "--schemes"),
        alphas: str = typer.Option(
            "0.3,0.4,0.5,0.6,0.7,0.8,0.9", "--alphas", help="SmoothQuant alphas"
        ),
        no_e2e: bool = typer.Option(False, "--no-e2e", help="skip the perplexity sweep"),
        no_sensitivity: bool = typer.Option(
            False, "--no-sensitivity", help="skip per-site sensitivity"
        ),
        split: float = typer.Option(0.5, "--split", help="corpus fraction for calibration"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        bos: str = typer.Option("auto", "--bos", help="auto (tokenizer default), always, never"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Per-site quantization sensitivity, co-variation, perplexity with SmoothQuant, imatrix."""
        from actscope.analyses.quant import QuantConfig, run_quant
        from actscope.data import load_corpus

        cfg = QuantConfig(
            sites=_names(sites),
            quantizers=_names(quantizers) or None,
            grid=grid,
            calib_tokens=calib_tokens,
            eval_tokens=eval_tokens,
            ppl_tokens=ppl_tokens or None,
            sens_tokens=sens_tokens or None,
            out_tokens=out_tokens or None,
            mse_tokens=mse_tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            split=split,
            seed=seed,
            bos=bos,
            schemes=_names(schemes),
            alphas=checks.parse_list(alphas, "--alphas", float),
            sensitivity=not no_sensitivity,
            e2e=not no_e2e,
        )
        cfg.validate()  # fail on a bad quantizer or scheme name before loading the model
        texts = load_corpus(corpus)
        lm = load(model, dtype, device)
        with StageBars() as bars:
            res = run_quant(lm, out, texts, cfg, progress=bars)
        _print_quant(res)
        print(out / "report.html")

    @app.command("covary", cls=OutCommand)
    def covary_cmd(
        runs: Annotated[list[Path], typer.Argument(help="quant run directories (one per model)")],
        out: Annotated[Path, out_option(help="run directory")] = COVARY_OUT,
        quantizer: str = typer.Option("int8-sym-tensor-max", "--quantizer", "-q"),
    ) -> None:
        """Rank correlation of site maxima / kurtosis with SQNR across layers and models."""
        from actscope.analyses.quant.covary import run_covary

        res = run_covary(list(runs), out, quantizer)
        table = res[(res.scope == "all")]
        console.print(table.to_string(index=False))
        print(out / "report.html")

    @app.command("imatrix", cls=OutCommand)
    def imatrix_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        corpus: str = typer.Option("default", "--corpus", "-c", help=CORPUS_HELP),
        out: Annotated[Path, out_option(help="GGUF file to write", kind="file")] = IMATRIX_OUT,
        tokens: int = typer.Option(65536, "--tokens", help="real tokens to read"),
        seq_len: int = typer.Option(512, "--seq-len"),
        batch_size: int = typer.Option(4, "--batch-size"),
        include_head: bool = typer.Option(
            False, "--include-head", help="also the LM head (output.weight)"
        ),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Write a llama.cpp importance matrix (GGUF) for MODEL's Linear layers."""
        from actscope.analyses.quant.imatrix import collect_imatrix

        checks.integer(tokens, "--tokens")
        lm = load(model, dtype, device)
        with StageBars() as bars:
            entries = collect_imatrix(
                lm,
                corpus,
                out,
                tokens=tokens,
                seq_len=seq_len,
                batch_size=batch_size,
                include_head=include_head,
                progress=bars,
            )
        console.print(f"{len(entries)} tensors")
        print(out)


def _print_quant(res: Any) -> None:
    lines = [f"[bold]{res.model}[/]"]
    for k, v in res.timings.items():
        lines.append(f"  {k}: {v['seconds']:.1f} s ({v['tokens_per_s']:,.0f} tok/s)")
    c = res.correlations
    if len(c):
        for r in c[c.scope == "all"].itertuples():
            lines.append(
                f"  Spearman({r.statistic}, int8 per-tensor {r.target}) = {r.rho:+.3f} (n={r.n})"
            )
    p = res.perplexity
    if p is not None:
        for r in p.itertuples():
            a = f" + SmoothQuant a={r.alpha:g}" if r.smoothing else ""
            lines.append(f"  ppl {r.scheme}{a}: {r.perplexity:.4f}")
    console.print("\n".join(lines))
