"""``actscope probe``: per-layer linear probes with a control task (selectivity)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from actscope.cli.common import MODEL_HELP, OutCommand, console, load, out_option
from actscope.utils import checks

PROBE_OUT = Path("runs/probe")


def register(app: typer.Typer) -> None:
    @app.command("probe", cls=OutCommand)
    def probe_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        data: str = typer.Option(
            "cities_truth",
            "--data",
            "-d",
            help="shipped labelled set (cities_truth) or a .jsonl with text, label and optional key",
        ),
        out: Annotated[
            Path, out_option(help="run directory to write")
        ] = PROBE_OUT,
        sites: str = typer.Option(
            "", "--sites", "-s", help="site patterns (default: embed + resid_post)"
        ),
        position: str = typer.Option(
            "last", "--position", help="last (last token) or mean (over tokens)"
        ),
        folds: int = typer.Option(5, "--folds"),
        c: float = typer.Option(1.0, "--C", help="inverse L2 strength of the logistic probe"),
        limit: int = typer.Option(0, "--limit", "-n", help="use the first N examples (0 = all)"),
        batch_size: int = typer.Option(16, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Cross-validated probe accuracy, control accuracy and selectivity per layer."""
        from actscope.analyses.explain.study_probe import (
            check_labels,
            load_labelled,
            probe_study,
            summary,
            write_run,
        )

        checks.integer(limit, "--limit", 0)
        checks.integer(batch_size, "--batch-size")
        checks.number(c, "--C", 0.0, low_open=True)
        checks.one_of(position, "--position", ("last", "mean"))
        texts, labels, keys = load_labelled(data, limit or None)
        check_labels(labels, folds)
        t0 = time.perf_counter()
        lm = load(model, dtype, device)
        with console.status("collecting features and fitting probes ..."):
            st = probe_study(
                lm,
                texts,
                labels,
                keys,
                sites=[s for s in sites.split(",") if s.strip()],
                position=position,
                folds=folds,
                seed=seed,
                c=c,  # type: ignore[arg-type]
                batch_size=batch_size,
            )
        args = {
            "model": model,
            "data": data,
            "sites": sites,
            "position": position,
            "folds": folds,
            "C": c,
            "limit": limit,
            "batch_size": batch_size,
            "seed": seed,
            "dtype": dtype,
            "device": device,
        }
        write_run(st, out, args, lm.describe(), time.perf_counter() - t0)
        s = summary(st)
        b, bs = s["best_accuracy"], s["best_selectivity"]
        console.print(
            f"[bold]{lm.name}[/]: best accuracy {b['accuracy']:.3f} at {b['site']} "
            f"(selectivity {b['selectivity']:+.3f}); best selectivity {bs['selectivity']:+.3f} "
            f"at {bs['site']}; majority {s['majority']:.3f}"
        )
        print(out / "report.html")
