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
