"""`actscope ablate` with a profile-like run directory; a missing profile is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.analyses.test_ablate import _profile

from actscope.cli.main import main


def test_ablate_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prof = _profile(tmp_path / "p")
    out = tmp_path / "a"
    argv = [
        "ablate",
        "-m",
        "tiny:llama",
        "-p",
        str(prof),
        "-o",
        str(out),
        "--topk",
        "1",
        "--no-random-control",
        "--modes",
        "zero",
        "--calib-tokens",
        "128",
        "--eval-tokens",
        "128",
        "--seq-len",
        "64",
        "--dtype",
        "fp32",
    ]
    assert main(argv) == 0
    assert (out / "tables" / "ablation.parquet").exists()
    assert "massive channels [5] at resid_post.0; [9] at resid_post.1" in capsys.readouterr().err


def test_missing_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ablate", "-m", "tiny:llama", "-p", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an actscope run directory" in err and len(err.splitlines()) == 1
