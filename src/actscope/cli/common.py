"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
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
# --- progress bars of the analysis commands -------------------------------------------------


class StageBars:
    """Rich progress bars on stderr, one per stage of a command (tokens, or steps).

    Nothing is drawn before the first stage starts, so an error found while the input is
    checked is the only line a command prints. When the command fails mid-way the bars are
    removed on exit, so its error line stands alone; a command that succeeds leaves them as a
    record of its stages. Stages are fed either with ``stage(name, total)`` then
    ``advance(n)``, or with ``update(stage, done, total)``, or with ``label(text)``.
    """

    def __init__(self, title: str | None = None) -> None:
        lead = [TextColumn(f"[bold]{title}")] if title else []
        self.progress = Progress(
            *lead,
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.started = False
        self.task: Any = None
        self.tasks: dict[str, Any] = {}
        self.t0: dict[Any, float] = {}  # task id -> start time
        self.unit = "tok"

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if not self.started:
            return
        if exc_type is not None:
            self.progress.live.transient = True
        self.progress.stop()

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def stage(self, name: str, total: int | None) -> None:
        """Start a stage of ``total`` tokens (None: a count of runs without a known end)."""
        self._start()
        self.unit = "tok" if total is not None else "runs"
        self.task = self.progress.add_task(name, total=total, rate="")
        self.tasks[name] = self.task
        self.t0[self.task] = time.perf_counter()

    def advance(self, n: int) -> None:
        """``n`` more tokens (or runs) of the current stage are done."""
        task = self.progress.tasks[-1]
        rate = (task.completed + n) / max(1e-9, time.perf_counter() - self.t0[self.task])
        self.progress.update(self.task, advance=n, rate=f"{rate:,.1f} {self.unit}/s")

    def update(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``stage`` are finished (the stage starts if new)."""
        if stage not in self.tasks:
            self.stage(stage, total)
        task = self.tasks[stage]
        rate = done / max(1e-9, time.perf_counter() - self.t0[task])
        self.progress.update(task, completed=done, total=total, rate=f"{rate:,.0f}/s")

    def label(self, text: str) -> None:
        """One more step, described by ``text``."""
        if "steps" not in self.tasks:
            self.stage("steps", None)
            self.tasks["steps"] = self.task
        self.progress.update(self.tasks["steps"], description=text, advance=1)
