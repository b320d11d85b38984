"""``actscope sites MODEL``: list a model's sites with their modules and shapes."""

from __future__ import annotations

from typing import Any

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
        verify: bool = typer.Option(
            False, "--verify", help="print the load-time check of each site's meaning instead"
        ),
    ) -> None:
        """Print every site of MODEL with its module, mode and shape (from a 4-token forward)."""
        from actscope.sites.shapes import site_shapes

        lm = load(model, dtype, device)
        if verify:
            _print_verification(lm)
            return
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


def _print_verification(lm: Any) -> None:
    """The identities checked on the probe (layers pooled), dropped and rewritten sites."""
    from actscope.capture.trace import sitemap_of

    sm = sitemap_of(lm)
    res = sm.verification
    out = Console(width=160)
    when = "read from the cache" if res.cached else f"{res.seconds * 1000:.0f} ms"
    title = (
        f"{lm.name} ({res.family}, {res.dtype}): {len(sm.names)} sites offered, "
        f"{len(sm.dropped)} dropped; check {when}, tolerance {res.tolerance:g} (relative)"
    )
    if res.error:
        out.print(f"{title}\nnot verified: {res.error}")
        return
    table = Table(title=title)
    for col in ("kind", "identity", "n", "failed", "max abs err", "rel err", "status"):
        table.add_column(col, no_wrap=col != "identity")
    for r in res.table():
        table.add_row(
            r["kind"],
            r["identity"],
            str(r["n"]),
            str(r["failed"]),
            f"{r['max_abs_err']:.3g}",
            f"{r['rel_err']:.3g}",
            r["status"],
        )
    out.print(table)
    if sm.dropped:
        dropped = Table(title="sites not offered")
        dropped.add_column("site", no_wrap=True)
        dropped.add_column("reason")
        for name, why in sm.dropped.items():
            dropped.add_row(name, why)
        out.print(dropped)
    if sm.inplace:
        out.print(
            "written in place by the model after capture (captures copy them): "
            + ", ".join(sorted(sm.inplace, key=sm.names.index))
        )
