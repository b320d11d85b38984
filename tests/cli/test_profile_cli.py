"""`actscope profile`: the progress total is the corpus's real token count, the summary
mentions non-finite values, and bad input stops before the bar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from actscope.cli.main import main


def test_progress_total_is_the_real_token_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("A short corpus of a few hundred bytes. " * 8)
    out = tmp_path / "run"
    argv = ["profile", "-m", "tiny:llama", "-c", str(corpus), "-o", str(out), "--seq-len", "64"]
    assert main([*argv, "--max-tokens", "100000"]) == 0
    err = capsys.readouterr().err
    tokens = json.loads((out / "manifest.json").read_text())["tokens"]
    assert tokens < 1000
    bar = [line for line in err.splitlines() if line.lstrip().startswith("profile")]
    assert bar and "100%" in bar[-1] and f"{tokens}/{tokens}" in bar[-1]
    assert "NaN/Inf" not in err


def test_summary_mentions_non_finite_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actscope.models.tiny import build_tiny, byte_tokenizer

    model = build_tiny("llama")
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")  # the final norm, so logits, go non-finite
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some text. " * 10)
    argv = ["profile", "-m", str(tmp_path / "m"), "-c", str(corpus), "-o", str(tmp_path / "r")]
    assert main([*argv, "--seq-len", "32", "--dtype", "fp32"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(r"[\d,]+ NaN/Inf values were counted and left out", err)


def test_bad_corpus_stops_before_the_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "c.txt"
    bad.write_bytes(b"\xff\xfe\x00")
    assert main(["profile", "-m", "tiny:llama", "-c", str(bad), "-o", str(tmp_path / "r")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "as UTF-8 text" in err[0]
