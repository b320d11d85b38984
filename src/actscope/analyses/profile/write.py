"""Writing a profile run directory (atomically) and reading it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from actscope.analyses.rundirs import read_json, read_manifest
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
