"""`actscope probe`: per-layer probe table, summary and report; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from actscope.cli.main import main


def test_probe_writes_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["probe", "-m", "tiny:llama", "-o", str(out), "-n", "40", "--folds", "3"]) == 0
    table = pd.read_parquet(out / "tables" / "probes.parquet")
    assert list(table["site"]) == ["embed", "resid_post.0", "resid_post.1"]
    assert {"accuracy", "control_accuracy", "selectivity", "majority"} <= set(table.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["control_key"] == "key" and summary["n"] == 40
    assert "<img" in (out / "report.html").read_text()


def test_probe_without_keys_uses_last_token(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "item {i}", "label": "{i % 2}"}}\n' for i in range(20)))
    out = tmp_path / "run"
    argv = [
        "probe",
        "-m",
        "tiny:llama",
        "-d",
        str(data),
        "-o",
        str(out),
        "-s",
        "resid_post.1",
        "--position",
        "mean",
        "--folds",
        "2",
    ]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["control_key"] == "last token"


def test_probe_one_label_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    assert main(["probe", "-m", "tiny:llama", "-d", str(data), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "two distinct labels" in err and len(err.splitlines()) == 1


def test_probe_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
