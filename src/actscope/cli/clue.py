"""``actscope clue``: CLUE-style verification of the model's own arithmetic answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from actscope.cli.common import MODEL_HELP, OutCommand, console, load, out_option

CLUE_OUT = Path("runs/clue")


def register(app: typer.Typer) -> None:
    @app.command("clue", cls=OutCommand)
    def clue_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        out: Annotated[Path, out_option(help="run directory to write")] = CLUE_OUT,
        n: int = typer.Option(300, "--n", "-n", help="arithmetic problems to generate and answer"),
        max_operand: int = typer.Option(60, "--max-operand", help="largest operand of + and -"),
        folds: int = typer.Option(5, "--folds", help="cross-validation folds for the centroids"),
        max_new_tokens: int = typer.Option(12, "--max-new-tokens"),
        batch_size: int = typer.Option(32, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Answer, self-check and score arithmetic answers; AUROC of CLUE vs confidence."""
        from actscope.analyses.explain.study_clue import check_options, clue_study, write_run

        check_options(n, max_operand, folds, max_new_tokens, batch_size)
        t0 = time.perf_counter()
        lm = load(model, dtype, device)
        with console.status(f"answering and scoring {n} problems ..."):
            st = clue_study(
                lm,
                n,
                seed=seed,
                max_operand=max_operand,
                folds=folds,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
        args = {
            "model": model,
            "n": n,
            "max_operand": max_operand,
            "folds": folds,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "seed": seed,
            "dtype": dtype,
            "device": device,
        }
        write_run(st, out, args, lm.describe(), time.perf_counter() - t0)
        h = st.headline
        console.print(
            f"[bold]{lm.name}[/]: accuracy {h['accuracy']:.3f} on {h['n_scored']} answers; "
            f"AUROC CLUE {h['auroc_clue']:.3f}, mean log-prob {h['auroc_confidence']:.3f}"
        )
        print(out / "report.html")
