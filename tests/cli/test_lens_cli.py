"""`actscope lens`: logit lens run, tuned lens fit and reuse; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from actscope.cli.main import main


def test_lens_with_tuned_fit_and_reuse(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "lens",
        "-m",
        "tiny:llama",
        "-o",
        str(out),
        "-n",
        "6",
        "--tuned",
        "--fit-tokens",
        "600",
        "--eval-tokens",
        "64",
        "--seq-len",
        "64",
    ]
    assert main(argv) == 0
    lens = pd.read_parquet(out / "tables" / "lens.parquet")
    assert set(lens["lens"]) == {"logit", "tuned"} and lens["prompt"].nunique() == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tuned_fit_tokens"] > 0 and len(summary["logit"]["top1_by_depth"]) == 3
    saved = out / "exports" / "tuned_lens.safetensors"
    assert saved.is_file()
    again = tmp_path / "again"
    argv = [
        "lens",
        "-m",
        "tiny:llama",
        "-o",
        str(again),
        "-n",
        "6",
        "--tuned-from",
        str(saved),
        "--eval-tokens",
        "0",
    ]
    assert main(argv) == 0
    lens2 = pd.read_parquet(again / "tables" / "lens.parquet")
    pd.testing.assert_frame_equal(lens, lens2)
    assert not (again / "tables" / "corpus_kl.parquet").exists()


def test_logit_lens_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["lens", "-m", "tiny:gpt2", "-o", str(out), "-n", "3", "--eval-tokens", "0"]) == 0
    assert set(pd.read_parquet(out / "tables" / "curves.parquet")["lens"]) == {"logit"}
    assert "<img" in (out / "report.html").read_text()


def test_lens_bad_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    assert main(["lens", "-m", "tiny:llama", "-p", str(bad), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks field(s) target" in err and len(err.splitlines()) == 1


def test_lens_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lens", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
