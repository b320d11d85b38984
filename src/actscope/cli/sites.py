"""``actscope sites MODEL``: list a model's sites with their modules and shapes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from actscope.cli.common import load


def register(app: typer.Typer) -> None:
    @app.command("sites")
    def sites_cmd(
        model: str = typer.Argument(
            ..., help="embedded name, path, GGUF file, hub id or tiny:FAMILY"
        ),
        pattern: str = typer.Option(
            "all", "--sites", "-s", help="site names, kinds or globs (comma-separated)"
        ),
        dtype: str = typer.Option("auto", help="auto (bf16), bf16, fp16, fp32"),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    ) -> None:
        """Print every site of MODEL with its module, mode and shape (from a 4-token forward)."""
        from actscope.sites.shapes import site_shapes

        lm = load(model, dtype, device)
        rows = site_shapes(lm, [p for p in pattern.split(",") if p])
        table = Table(title=f"{lm.name} ({lm.family}, {rows[0]['n_layers']} layers)")
        for col in ("site", "module", "mode", "shape"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(r["site"], r["module"], r["mode"], r["shape"])
        legend = Table(title="site kinds", show_lines=False)
        legend.add_column("kind", no_wrap=True)
        legend.add_column("meaning")
        seen: dict[str, str] = {}
        for r in rows:
            seen.setdefault(r["site"].split(".")[0], r["meaning"])
        for kind, meaning in seen.items():
            legend.add_row(kind, meaning)
        out = Console(width=160)
        out.print(table)
        out.print(legend)
