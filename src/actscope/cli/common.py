"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import time
from typing import Any

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
