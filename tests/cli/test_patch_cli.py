"""`actscope patch`: a run directory with tables, summary and report; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from actscope.cli.main import main

PAIRS = (
    '{"clean": "When Anna and Lucy went, Lucy gave it to ", '
    '"corrupt": "When Anna and Lucy went, Anna gave it to ", "answer": "A", "wrong": "L"}\n'
    '{"clean": "When Mark and Paul went, Paul gave it to ", '
    '"corrupt": "When Mark and Paul went, Mark gave it to ", "answer": "M", "wrong": "P"}\n'
)


def test_patch_writes_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(PAIRS)
    out = tmp_path / "run"
    argv = ["patch", "-m", "tiny:llama", "-p", str(pairs), "-o", str(out), "-s", "resid_pre"]
    assert main(argv) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    tables = {p.stem for p in (out / "tables").glob("*.parquet")}
    assert tables == {"exact", "exact_agg", "atp", "atp_agg", "agreement", "baselines"}
    exact = pd.read_parquet(out / "tables" / "exact.parquet")
    assert set(exact["kind"]) == {"resid_pre", "o_in"} and set(exact["pair"]) == {0, 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == 2 and "agreement" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "patch" and manifest["model"]["name"] == "tiny:llama"
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 5  # 2 position heatmaps + 2 head heatmaps + scatter


def test_patch_exact_only_without_heads(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(PAIRS.splitlines()[0])
    out = tmp_path / "run"
    argv = [
        "patch",
        "-m",
        "tiny:gpt2",
        "-p",
        str(pairs),
        "-o",
        str(out),
        "-s",
        "mlp_out",
        "--no-heads",
        "--method",
        "exact",
        "--direction",
        "noise",
    ]
    assert main(argv) == 0
    assert not (out / "tables" / "atp.parquet").exists()
    agg = pd.read_parquet(out / "tables" / "exact_agg.parquet")
    assert set(agg["kind"]) == {"mlp_out"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-p", "no-such-set"], "unknown dataset 'no-such-set'"),
        (["--method", "guess"], "method must be one of"),
        (["-s", "logits", "--no-heads"], "cannot patch logits"),
        (["-p", "ioi"], "start with the same token"),
    ],
)
def test_patch_bad_input(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(PAIRS)
    argv = ["patch", "-m", "tiny:llama", "-p", str(pairs), "-o", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_patch_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patch", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
