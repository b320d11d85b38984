"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
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
