"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperCommand

if TYPE_CHECKING:
    from actscope.runs import OutKind

console = Console(stderr=True)

MODEL_HELP = "embedded name, path, GGUF, hub id or tiny:FAMILY"
CORPUS_HELP = "'default', a .txt/.jsonl/.parquet file or a dataset folder"


def token_progress(
    total: int | None, description: str = "tokens", title: str | None = None
) -> Progress:
    """A rich progress bar counting tokens, with throughput and ETA (``title`` leads each line)."""
    lead = [TextColumn(f"[bold]{title}"), TextColumn("{task.description}")] if title else []
    return Progress(
        *(lead or [TextColumn("[bold]{task.description}")]),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def load(
    model: str, dtype: str = "auto", device: str = "auto", device_map: str | None = None
) -> Any:
    """Load a model with a status line (GGUF dequantisation can take a while the first time)."""
    from actscope.models import load_model

    with console.status(f"loading {model} ..."):
        return load_model(model, dtype=dtype, device=device, device_map=device_map)


# --- the --out option: one declaration, checked while the arguments are parsed --------------

_OUT_META = "actscope.out"


def _command_name(ctx: click.Context) -> str:
    """The command's name below the program: ``profile``, ``steer train``."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _preflight(ctx: click.Context, name: str, kind: OutKind, inputs: list[str]) -> None:
    from actscope.runs import check_out

    value = ctx.params.get(name)
    if value is None or str(value) == "":  # no output requested
        return
    command = _command_name(ctx) if kind == "run" else None
    # a sweep updates its folder in place (run_sweep checks the folders it replaces)
    check_out(value, inputs=inputs if kind != "sweep" else (), kind=kind, command=command)


def out_option(
    default: Any = ..., help: str = "run directory to write", kind: OutKind = "run"
) -> Any:
    """The ``--out/-o`` option; its value is checked by :func:`actscope.runs.check_out`.

    ``default``: the value, or ``...`` (required, or the ``= value`` of an ``Annotated`` use).

    The check runs while the arguments are parsed, before any model load or progress bar.
    ``kind``: run (a run folder of this command), store, sweep or file. None or "" as a value
    means no output. Commands declared with ``cls=OutCommand`` run it once every value is
    parsed, and also refuse an ``--out`` that is, contains or sits inside any existing path
    given to another option or argument (the paths the command reads).
    """

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        name = param.name or "out"
        ctx.meta[_OUT_META] = (name, kind)
        if not isinstance(ctx.command, OutCommand):  # else checked once all values are parsed
            ctx.params[name] = value
            _preflight(ctx, name, kind, _inputs(ctx, name))
        return value

    return typer.Option(default, "--out", "-o", help=help, callback=check)


def _paths(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, (str, os.PathLike)) and str(value) and os.path.exists(value):
        return [os.fspath(value)]
    return []


def _inputs(ctx: click.Context, out_name: str) -> list[str]:
    """Existing paths among the parsed values of the command's other parameters."""
    return [p for key, v in ctx.params.items() if key != out_name for p in _paths(v)]


class OutCommand(TyperCommand):
    """A command with an :func:`out_option`, checked against every path the command reads."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        spec = ctx.meta.get(_OUT_META)
        if spec is not None:
            name, kind = spec
            _preflight(ctx, name, kind, _inputs(ctx, name))
        return rest
