"""`actscope sparsity`: the four commands on a tiny model, and one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from actscope.cli.main import main


def _corpus(tmp_path: Path) -> Path:
    rng = random.Random(3)
    words = {
        "prose": ["a", "quiet", "river", "runs", "past", "the", "old", "mill"],
        "code": ["for", "i", "in", "range", "(", "n", ")", ":", "print", "(", "i", ")"],
    }
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as fh:
        for i in range(24):
            dom = ("prose", "code")[i % 2]
            text = " ".join(rng.choice(words[dom]) for _ in range(100))
            fh.write(json.dumps({"id": f"d{i}", "domain": dom, "text": text}) + "\n")
    return path


def test_calibrate_evaluate_measure_bench(tmp_path: Path) -> None:
    corpus = str(_corpus(tmp_path))
    common = ["-m", "tiny:llama", "-c", corpus, "--seq-len", "64"]
    cal = tmp_path / "cal"
    assert (
        main(
            [
                "sparsity",
                "calibrate",
                *common,
                "-o",
                str(cal),
                "--tokens",
                "600",
                "--targets",
                "0.4,0.5",
                "--allocation",
                "uniform,greedy",
                "--greedy-rules",
                "teal",
                "--greedy-tokens",
                "64",
                "--greedy-step",
                "0.25",
            ]
        )
        == 0
    )
    doc = json.loads((cal / "thresholds.json").read_text())
    assert {(p["rule"], p["allocation"]) for p in doc["plans"]} == {
        ("teal", "uniform"),
        ("teal", "greedy"),
        ("wina", "uniform"),
        ("chess", "uniform"),
    }
    assert doc["calibration"]["part"] == 0 and doc["calibration"]["fraction"] == 0.5

    ev = tmp_path / "ev"
    assert (
        main(
            [
                "sparsity",
                "evaluate",
                *common,
                "-t",
                str(cal),
                "-o",
                str(ev),
                "--tokens",
                "400",
                "--targets",
                "0,0.4,0.5",
                "--allocation",
                "uniform,greedy",
                "--prefill-fraction",
                "0.5",
            ]
        )
        == 0
    )
    table = pd.read_parquet(ev / "tables" / "perplexity.parquet")
    assert len(table) == 4 * 3 and (table.prefill_fraction == 0.5).all()
    manifest = json.loads((ev / "manifest.json").read_text())
    assert manifest["args"]["held_out"] == "split part 1" and manifest["prefill_fraction"] == 0.5
    assert "Perplexity table" in (ev / "report.html").read_text()

    me = tmp_path / "me"
    assert (
        main(
            [
                "sparsity",
                "measure",
                *common,
                "-o",
                str(me),
                "--tokens",
                "300",
                "--cett-tokens",
                "16",
            ]
        )
        == 0
    )
    assert (me / "tables" / "cett.parquet").exists()

    be = tmp_path / "be"
    assert (
        main(
            [
                "sparsity",
                "bench",
                "-m",
                "tiny:llama",
                "-t",
                str(cal),
                "-o",
                str(be),
                "--targets",
                "0.5",
                "--kernels",
                "bag",
                "--dtypes",
                "fp32",
                "--new-tokens",
                "3",
                "--repeats",
                "1",
                "--no-gemv",
            ]
        )
        == 0
    )
    summary = json.loads((be / "summary.json").read_text())
    assert [d["config"] for d in summary["decode"]] == ["dense", "teal@0.5"]
    assert json.loads((be / "manifest.json").read_text())["masked_dense_timed"] is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sparsity", "calibrate", "-m", "tiny:llama", "--rules", "teel"], "unknown sparsity rule"),
        (["sparsity", "calibrate", "-m", "tiny:gpt2", "--rules", "chess"], "gated MLP"),
        (["sparsity", "evaluate", "-m", "tiny:llama"], "needs a thresholds file"),
        (
            ["sparsity", "evaluate", "-m", "tiny:llama", "-t", "/nonexistent/t.json"],
            "does not exist",
        ),
        (["sparsity", "bench", "-m", "tiny:llama", "--targets", "x"], "comma-separated"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and err.startswith("actscope: error:")
