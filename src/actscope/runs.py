"""Run directories: every command writes one, atomically.

Layout of ``OUT/``::

    manifest.json   what ran: command, arguments, model (name, file hash, dtype, device),
                    corpus, library versions, seed, wall time, tokens and tokens/s
    summary.json    the headline numbers of the command
    tables/*.parquet tidy tables (one row per site and statistic, per event, per setting...)
    report.html     the self-contained HTML report
    exports/...     files meant for other tools (act scales, imatrix, vectors)

Everything is written into a hidden sibling folder and renamed to ``OUT`` only when the command
succeeded, so a crash never leaves a half-written directory that looks complete.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

from actscope.utils.atomic import atomic_dir

_LIBS = ("actscope", "torch", "transformers", "accelerate", "numpy", "pyarrow", "gguf")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that affect results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples to JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and obj != obj:
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


class RunWriter(AbstractContextManager["RunWriter"]):
    """Collects a run's files in a temporary folder and publishes them on success."""

    def __init__(self, out: str | Path, command: str, args: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.command = command
        self.manifest: dict[str, Any] = {
            "command": command,
            "args": to_jsonable(args or {}),
            "versions": library_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._t0 = time.perf_counter()
        self._ctx = atomic_dir(self.out)
        self.tmp: Path | None = None

    def __enter__(self) -> RunWriter:
        self.tmp = self._ctx.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is None:
            # the run's own figure when it measured one before writing (a profile does)
            self.manifest.setdefault("wall_seconds", round(time.perf_counter() - self._t0, 3))
            self.manifest["write_seconds"] = round(time.perf_counter() - self._t0, 3)
            self.json("manifest.json", self.manifest)
        return self._ctx.__exit__(exc_type, exc, tb)

    @property
    def path(self) -> Path:
        assert self.tmp is not None, "RunWriter used outside its with-block"
        return self.tmp

    def table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``tables/<name>.parquet``."""
        p = self.path / "tables" / f"{name}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(p, index=False)
        return p

    def json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))
        return p

    def text(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p

    def file(self, name: str) -> Path:
        """Path inside the run folder for a file written by another library."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
