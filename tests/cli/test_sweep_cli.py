"""`actscope sweep`: a local sweep from a YAML file, the Ray install hint, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.store._corpus import write_corpus

import actscope.distributed.cluster as cluster
from actscope.cli.main import main


def _spec(tmp_path: Path, models: list[str]) -> Path:
    write_corpus(tmp_path / "c.jsonl")
    path = tmp_path / "models.yaml"
    lines = [
        "corpus: c.jsonl",
        "dtype: fp32",
        "profile: {max_tokens: 400, seq_len: 40, batch_size: 4, sites: [resid_post, logits]}",
        "models:",
        *[f"  - {m}" for m in models],
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_local_sweep_writes_runs_and_one_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, ["tiny:llama", "tiny:qwen3"])
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--local"]) == 0
    printed = capsys.readouterr().out
    assert (
        "tiny-llama: 400 tokens" in printed and str(out / "comparison" / "report.html") in printed
    )
    record = json.loads((out / "sweep.json").read_text())
    assert [m["status"] for m in record["models"]] == ["ok", "ok"]
    assert (out / "models" / "tiny-qwen3" / "report.html").exists()


def test_failed_model_exits_2_after_writing_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken").mkdir()  # resolves as a path, fails when it is loaded
    spec = _spec(tmp_path, ["tiny:llama", str(tmp_path / "broken")])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("actscope: error: 1 model(s) of the sweep failed: broken")
    assert (tmp_path / "o" / "comparison" / "report.html").exists()


def test_without_ray_the_sweep_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cluster, "ray_available", lambda: False)
    spec = _spec(tmp_path, ["tiny:llama"])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'actscope[ray]'" in err and "--local" in err and len(err.splitlines()) == 1


def test_bad_sweep_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("models: []\n")
    assert main(["sweep", str(path), "--local"]) == 2
    assert "non-empty 'models'" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--local"]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
