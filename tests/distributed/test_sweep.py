"""Sweeps: the YAML format, models as separate Ray tasks, failures, one comparison report."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from tests.store._corpus import write_corpus

from actscope.analyses.profile import read_run
from actscope.distributed import SweepError, load_sweep, parse_sweep, run_sweep

PROFILE = {"max_tokens": 800, "seq_len": 48, "batch_size": 4, "sites": "resid_post,mlp_out"}


def _spec_file(tmp_path: Path, models: list[object]) -> Path:
    write_corpus(tmp_path / "corpus.jsonl")
    text = json.dumps(
        {"corpus": "corpus.jsonl", "dtype": "fp32", "profile": PROFILE, "models": models}
    )
    path = tmp_path / "models.yaml"
    path.write_text(text)  # JSON is YAML
    return path


def test_parse_names_defaults_and_paths(tmp_path: Path) -> None:
    spec = load_sweep(
        _spec_file(tmp_path, ["tiny:llama", {"name": "g", "model": "tiny:gemma3", "dtype": "bf16"}])
    )
    assert [(m.name, m.model, m.dtype) for m in spec.models] == [
        ("tiny-llama", "tiny:llama", "fp32"),
        ("g", "tiny:gemma3", "bf16"),
    ]
    assert spec.corpus == str(tmp_path / "corpus.jsonl")
    assert spec.config.sites == ["resid_post", "mlp_out"] and spec.config.max_tokens == 800


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"models": []}, "non-empty 'models'"),
        ({"models": ["a"], "modles": 1}, "unknown sweep key 'modles'"),
        ({"models": ["tiny:llama", "tiny:llama"]}, "repeated: tiny-llama"),
        ({"models": [{"name": "x"}]}, "mapping with 'model'"),
        ({"models": [{"model": "m", "gpu": 1}]}, "unknown model key 'gpu'"),
        ({"models": ["m"], "profile": {"max_tokenz": 5}}, "did you mean: max_tokens"),
    ],
)
def test_bad_sweep_files(obj: object, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_sweep(obj)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a, b\n")
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(bad)


def test_ray_sweep_runs_models_as_tasks_and_compares(
    ray_cluster: ModuleType, tmp_path: Path
) -> None:
    spec = load_sweep(_spec_file(tmp_path, ["tiny:llama", "tiny:gemma3", "tiny:nosuch"]))
    done: list[str] = []
    result = run_sweep(
        spec, tmp_path / "out", executor="ray", on_done=lambda n, s: done.append(f"{n}:{s[:6]}")
    )
    assert sorted(done) == ["tiny-gemma3:ok", "tiny-llama:ok", "tiny-nosuch:failed"]
    assert set(result.runs) == {"tiny-llama", "tiny-gemma3"}
    assert "unknown tiny family 'nosuch'" in result.errors["tiny-nosuch"]
    assert result.comparison is not None and (result.comparison / "report.html").exists()
    models = pd.read_parquet(result.comparison / "tables" / "models.parquet")
    assert sorted(models["model"]) == ["tiny:gemma3", "tiny:llama"]
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [m["status"] for m in record["models"]] == ["ok", "ok", "failed"]
    assert record["executor"] == "ray" and ray_cluster.is_initialized()

    # the same models in this process give the same numbers
    local_spec = load_sweep(_spec_file(tmp_path, ["tiny:llama"]))
    local = run_sweep(local_spec, tmp_path / "local", executor="local")
    a = read_run(local.runs["tiny-llama"])
    b = read_run(result.runs["tiny-llama"])
    assert a["manifest"]["tokens"] == b["manifest"]["tokens"] == 800
    assert a["summary"]["global_max"]["abs_value"] == b["summary"]["global_max"]["abs_value"]


def test_sweep_where_everything_fails(tmp_path: Path) -> None:
    spec = load_sweep(_spec_file(tmp_path, ["tiny:nosuch"]))
    with pytest.raises(SweepError, match="every model of the sweep failed"):
        run_sweep(spec, tmp_path / "out", executor="local")
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["comparison"] is None
