"""`actscope clue`: the whole pipeline on a tiny model (with a stand-in checker)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import actscope.analyses.explain.study_clue as study_clue
from actscope.analyses.explain.arithmetic import Problem
from actscope.cli.main import main


def test_clue_writes_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A random tiny model never answers correctly; grade by operand parity instead so that
    # both centroids exist and every stage (generate, summarise, score, report) runs.
    monkeypatch.setattr(study_clue, "is_correct", lambda p, text: p.a % 2 == 0)
    out = tmp_path / "run"
    argv = [
        "clue",
        "-m",
        "tiny:llama",
        "-o",
        str(out),
        "-n",
        "24",
        "--max-new-tokens",
        "3",
        "--folds",
        "3",
        "--batch-size",
        "8",
    ]
    assert main(argv) == 0
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    assert len(answers) == 24 and {"clue_score", "mean_logprob", "correct"} <= set(answers)
    layers = pd.read_parquet(out / "tables" / "layers.parquet")
    assert list(layers["layer"]) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["auroc_clue"] <= 1 and 0 <= summary["auroc_confidence"] <= 1
    assert "AUROC CLUE" in capsys.readouterr().err


def test_clue_without_successes_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "clue",
        "-m",
        "tiny:llama",
        "-o",
        str(tmp_path / "r"),
        "-n",
        "8",
        "--max-new-tokens",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 2 correct and 2 wrong" in err and len(err.splitlines()) == 1
    assert Problem(1, "+", 2, 3).result == 3


def test_clue_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clue", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
