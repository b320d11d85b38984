"""``actscope steer``: train, condition, eval and generate end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from actscope.cli.main import main
from actscope.interventions.steering import Condition, ContrastDataset, SteeringVector


def _ab_file(tmp: Path) -> Path:
    recs = [
        {
            "question": f"Do you like item {i}?\n(A) yes, a lot\n(B) no, not at all",
            "answer_matching_behavior": "(A)" if i % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
        }
        for i in range(12)
    ]
    return ContrastDataset.from_records(recs, name="likes").to_jsonl(tmp / "likes.jsonl")


def test_train_eval_generate_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _ab_file(tmp_path)
    run = tmp_path / "train"
    rc = main(
        [
            "steer",
            "train",
            "-m",
            "tiny:llama",
            "-d",
            str(data),
            "-o",
            str(run),
            "--bootstrap",
            "5",
            "--dtype",
            "fp32",
        ]
    )
    assert rc == 0
    vec = SteeringVector.load(run)
    assert vec.layers == [0, 1] and vec.dataset == "likes|split(0.5,seed=0)[0]"
    assert (run / "exports" / "control_vector.gguf").exists()  # layer 1 has a llama.cpp slot
    assert SteeringVector.load(run / "exports" / "control_vector.gguf").layers == [1]
    stats = pd.read_parquet(run / "tables" / "layer_stats.parquet")
    assert list(stats.layer) == [0, 1] and "bootstrap_cos_p05" in stats
    assert json.loads((run / "manifest.json").read_text())["command"] == "steer train"

    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\nhow are you\n")
    ev = tmp_path / "eval"
    rc = main(
        [
            "steer",
            "eval",
            "-m",
            "tiny:llama",
            "-v",
            str(run),
            "-d",
            str(data),
            "-o",
            str(ev),
            "--multipliers",
            "-1,1",
            "--neutral-tokens",
            "0",
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "3",
            "--dtype",
            "fp32",
            "--positions",
            "instruction",
        ]
    )
    assert rc == 0
    ab = pd.read_parquet(ev / "tables" / "ab_sweep.parquet")
    assert set(ab.multiplier) == {-1.0, 0.0, 1.0} and set(ab.layer) == {0, 1}
    samples = [json.loads(x) for x in (ev / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    assert "<img" in (ev / "report.html").read_text()

    out = tmp_path / "gen.jsonl"
    rc = main(
        [
            "steer",
            "generate",
            "-m",
            "tiny:llama",
            "-v",
            str(run),
            "-c",
            "4",
            "-p",
            "hello",
            "-p",
            "bye",
            "--max-new-tokens",
            "4",
            "-o",
            str(out),
            "--dtype",
            "fp32",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "bye"] and "unsteered" in rows[0]


def test_condition_command_writes_a_loadable_condition(tmp_path: Path) -> None:
    recs = [{"text": f"apple number {i}", "label": 1} for i in range(10)]
    recs += [{"text": f"zzqq {i} xx", "label": 0} for i in range(10)]
    data = ContrastDataset.from_records(recs, name="apples").to_jsonl(tmp_path / "a.jsonl")
    out = tmp_path / "cond"
    rc = main(
        [
            "steer",
            "condition",
            "-m",
            "tiny:llama",
            "-d",
            str(data),
            "-o",
            str(out),
            "--dtype",
            "fp32",
            "--scores",
            "cos,proj_cos",
        ]
    )
    assert rc == 0
    cond = Condition.load(out / "exports" / "condition.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["site"] == cond.site and "test_f1" in summary and "test_auc" in summary
    grid = pd.read_parquet(out / "tables" / "condition_grid.parquet")
    assert len(grid) == 2 * 2 * 2


def test_bad_input_exits_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["steer", "train", "-m", "tiny:llama", "-d", "no-such-set", "-o", str(tmp_path / "x")]
    )
    assert rc == 2
    assert "unknown steering dataset" in capsys.readouterr().err
    rc = main(
        [
            "steer",
            "generate",
            "-m",
            "tiny:llama",
            "-v",
            str(tmp_path / "none.safetensors"),
            "-p",
            "hi",
        ]
    )
    assert rc == 2
    assert not (tmp_path / "x").exists()


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("actscope: error:")]


def test_steering_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from safetensors.torch import save_file

    data = _ab_file(tmp_path)
    rc = main(
        [
            "steer",
            "train",
            "-m",
            "tiny:llama",
            "-d",
            str(data),
            "-o",
            str(tmp_path / "q"),
            "--site",
            "q_out",
        ]
    )
    assert rc == 2 and "residual stream" in _errors(capsys)[0]
    assert not (tmp_path / "q").exists()
    llama = SteeringVector(
        {0: torch.ones(64), 1: torch.ones(64)}, model="tiny:llama", family="llama"
    ).save(tmp_path / "v.safetensors")
    broken = tmp_path / "broken.safetensors"
    meta = {"format": "actscope.steering/1", "actscope": '{"site": "resid_post", '}
    save_file({"direction.0": torch.ones(64)}, str(broken), metadata=meta)
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(b"\x00\xff\xfe binary")
    gen = ["steer", "generate", "--max-new-tokens", "2", "--dtype", "fp32"]
    cases = [
        (["-m", "tiny:qwen2", "-v", str(llama), "-p", "hi"], "trained on a llama model"),
        (["-m", "tiny:llama", "-v", str(broken), "-p", "hi"], "not valid JSON"),
        (["-m", "tiny:llama", "--prompts", str(binary)], "a binary file"),
    ]
    for args, message in cases:
        assert main([*gen, *args]) == 2, args
        lines = _errors(capsys)
        assert len(lines) == 1 and message in lines[0], lines
    assert main([*gen, "-m", "tiny:qwen2", "-v", str(llama), "-p", "hi", "--any-model"]) == 0
