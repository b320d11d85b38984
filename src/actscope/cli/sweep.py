"""``actscope sweep models.yaml``: profile several models as Ray tasks and compare them.

actscope sweep models.yaml --out runs/sweep            # Ray (local cluster or --address)
actscope sweep models.yaml --out runs/sweep --local    # one after the other, no Ray
"""

from __future__ import annotations

from pathlib import Path

import typer

from actscope.cli.common import OutCommand, console, out_option


def register(app: typer.Typer) -> None:
    @app.command("sweep", cls=OutCommand)
    def sweep_cmd(
        spec: str = typer.Argument(..., help="sweep YAML file (models, corpus, profile options)"),
        out: str | None = out_option(
            None, "output folder (default: the file's 'out', else runs/sweep)", kind="sweep"
        ),
        local: bool = typer.Option(False, "--local", help="run in this process, without Ray"),
        address: str | None = typer.Option(None, help="Ray cluster address (default: local)"),
        workers: int | None = typer.Option(
            None, help="CPUs of the local Ray cluster (default: one per model)"
        ),
    ) -> None:
        """Profile every model of SPEC as a separate task; write the runs and one comparison."""
        from actscope.data import load_corpus
        from actscope.distributed import SweepError, load_sweep, require_ray, run_sweep
        from actscope.distributed.sweep import check_outputs
        from actscope.models.loading import model_kind, resolve_device, resolve_dtype

        sweep = load_sweep(spec)
        if not local:
            require_ray("`actscope sweep` (add --local to run without Ray)")
        if workers is not None and workers < 1:
            raise SweepError(f"--workers must be >= 1, got {workers}")
        # the run tolerates a model that fails while it loads or runs; names that cannot
        # resolve, and a corpus that cannot be read, are refused before any model starts
        load_corpus(sweep.corpus)
        for m in sweep.models:
            model_kind(m.model)
            resolve_device(m.device)
            resolve_dtype(m.dtype, m.device)
        target = Path(out or sweep.out or "runs/sweep")
        check_outputs(sweep, target)  # before anything is printed or loaded
        names = ", ".join(m.name for m in sweep.models)
        console.print(f"sweep of {len(sweep.models)} model(s): {names}")
        result = run_sweep(
            sweep,
            target,
            executor="local" if local else "ray",
            address=address,
            workers=workers,
            on_done=lambda name, status: console.print(f"  {name}: {status}"),
        )
        for row in result.record["models"]:
            if row["status"] == "ok":
                typer.echo(f"{row['name']}: {row['tokens']} tokens, {row['tokens_per_s']} tok/s")
        if result.comparison is not None:
            typer.echo(str(result.comparison / "report.html"))
        if result.errors:
            failed = "; ".join(f"{n}: {e}" for n, e in result.errors.items())
            raise SweepError(f"{len(result.errors)} model(s) of the sweep failed: {failed}")
