"""`actscope` entry point: usage errors in one line, Ctrl-C as one line and exit 130."""

from __future__ import annotations

from pathlib import Path

import pytest

from actscope.cli.main import main, one_line


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sites", "tiny:llama", "--colour", "red"], "No such option: --colour"),
        (["profile", "--seq-len", "long"], "Invalid value for '--seq-len'"),
        (["sights"], "No such command 'sights'"),
        (["sites"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("actscope: error: ") and message in err[0]
    assert "--help`)" in err[0]


def test_help_still_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "profile" in capsys.readouterr().out
    main(["sparsity"])  # a bare group prints its help, as click does
    assert "calibrate" in capsys.readouterr().out


def test_ctrl_c_prints_one_line_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("actscope.cli.sites.load", interrupted)
    assert main(["sites", "tiny:llama"]) == 130
    assert _lines(capsys.readouterr().err) == ["actscope: interrupted"]


def test_ctrl_c_while_a_run_is_written_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("actscope.analyses.profile.report.build_report", interrupted)
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some text to profile. " * 10)
    out = tmp_path / "run"
    argv = ["profile", "-m", "tiny:llama", "-c", str(corpus), "-o", str(out), "--seq-len", "32"]
    assert main(argv) == 130
    assert _lines(capsys.readouterr().err) == ["actscope: interrupted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_one_line_joins_lines() -> None:
    assert one_line("a\n  b\n\nc ") == "a b c"
