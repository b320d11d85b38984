"""`actscope quant`, `covary` and `imatrix` on a tiny model; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from actscope.cli.main import main


def test_quant_covary_imatrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "64", "--dtype", "fp32"]
    q = tmp_path / "q"
    assert (
        main(
            [
                "quant",
                "-m",
                "tiny:llama",
                "-o",
                str(q),
                "--grid",
                "fast",
                "--alphas",
                "0.5",
                "--schemes",
                "W8A8",
                *args,
            ]
        )
        == 0
    )
    assert (q / "report.html").exists() and (q / "tables" / "sensitivity.parquet").exists()
    assert "ppl W8A8" in capsys.readouterr().err
    assert main(["covary", str(q), str(q), "-o", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "tables" / "correlations.parquet").exists()
    out = tmp_path / "m.imatrix.gguf"
    assert (
        main(
            [
                "imatrix",
                "-m",
                "tiny:llama",
                "-o",
                str(out),
                "--tokens",
                "300",
                "--seq-len",
                "64",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    assert out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quant", "-m", "tiny:llama", "-q", "int8-sym-row-max"], "cannot parse quantizer"),
        (["quant", "-m", "tiny:llama", "--schemes", "W2A2"], "unknown scheme"),
        (["covary", "/nonexistent"], "quant run /nonexistent not found"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("actscope: error:") and len(err.splitlines()) == 1


def test_quant_on_a_subset_of_sites_runs_the_whole_perplexity_sweep(tmp_path: Path) -> None:
    """The sweep smooths every Linear, so their scales are calibrated although --sites names
    one site (this ended in a KeyError in smoothed_ranges after the sensitivity pass)."""
    import pandas as pd

    q = tmp_path / "q"
    argv = ["quant", "-m", "tiny:llama", "-o", str(q), "--sites", "resid_post", "--grid", "fast"]
    argv += ["--alphas", "0.5", "--schemes", "W8A8-static", "--calib-tokens", "128"]
    argv += ["--eval-tokens", "128", "--seq-len", "64", "--dtype", "fp32"]
    assert main(argv) == 0
    sens = pd.read_parquet(q / "tables" / "sensitivity.parquet")
    assert set(sens["kind"]) == {"resid_post"}
    ppl = pd.read_parquet(q / "tables" / "perplexity.parquet")
    assert ppl["smoothing"].any() and ppl["perplexity"].notna().all()
