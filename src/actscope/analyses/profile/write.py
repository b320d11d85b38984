"""Writing a profile run directory (atomically) and reading it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from actscope.errors import DataError
from actscope.runs import RunWriter


def view_table(view: dict[str, Any]) -> pd.DataFrame:
    """The token x channel view in long form: position, token, channel, abs."""
    mag = np.asarray(view["abs"])
    t, d = mag.shape
    return pd.DataFrame(
        {
            "site": view["site"],
            "position": np.repeat(np.arange(t), d),
            "token": np.repeat(np.asarray(view["tokens"], dtype=object), d),
            "channel": np.tile(np.arange(d), t),
            "abs": mag.reshape(-1).astype(np.float32),
        }
    )


def write_run(result: Any, out: str | Path) -> Path:
    """Write manifest, summary, Parquet tables, exports and report.html into ``out``."""
    from actscope.analyses.profile.report import build_report

    out = Path(out)
    with RunWriter(out, "profile", result.manifest.get("config", {})) as w:
        w.manifest.update(result.manifest)
        for name, df in result.tables.items():
            w.table(name, df)
        if result.view is not None:
            w.table("token_channel_view", view_table(result.view))
        w.json("summary.json", result.summary)
        exp = result.exports
        torch.save(
            exp.get("smoothquant_act_scales", {}), w.file("exports/smoothquant_act_scales.pt")
        )
        torch.save(exp.get("awq_mean_abs", {}), w.file("exports/awq_mean_abs.pt"))
        torch.save(exp.get("imatrix_sums", {}), w.file("exports/imatrix_sums.pt"))
        w.text("report.html", build_report(result))
    return out


def read_json(path: Path, what: str) -> Any:
    """The JSON document in ``path``; :class:`DataError` naming ``what`` when it is missing,
    not UTF-8 or not valid JSON."""
    from actscope.data import read_text

    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc})") from exc


def read_manifest(path: str | Path, command: str = "profile") -> dict[str, Any]:
    """The manifest of the ``command`` run directory ``path``.

    Refuses a path that does not exist, a folder without ``manifest.json`` (not an actscope
    run), an unreadable manifest, and the run of another command (a steering run given where
    a profile is expected).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{command} run {p} not found")
    if not p.is_dir() or not (p / "manifest.json").is_file():
        raise DataError(f"{p} is not an actscope run directory (no manifest.json)")
    manifest = read_json(p / "manifest.json", "run manifest")
    if not isinstance(manifest, dict):
        raise DataError(f"run manifest {p / 'manifest.json'} is not a JSON object")
    if manifest.get("command") != command:
        raise DataError(
            f"{p} is not a {command} run (its manifest says command "
            f"{manifest.get('command')!r})"
        )
    return manifest


def read_run(path: str | Path) -> dict[str, Any]:
    """Load a profile run directory: manifest, summary and every table."""
    p = Path(path)
    manifest = read_manifest(p, "profile")
    summary = read_json(p / "summary.json", "profile summary")
    tables = sorted((p / "tables").glob("*.parquet"))
    if not isinstance(summary, dict) or "sun_criterion" not in summary or not tables:
        raise DataError(f"{p} is an incomplete profile run (summary.json or tables/ missing)")
    try:
        frames = {f.stem: pd.read_parquet(f) for f in tables}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the tables of profile run {p}: {exc}") from exc
    return {"path": p, "manifest": manifest, "summary": summary, "tables": frames}
