"""The thresholds file: round trip, lookups and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actscope.errors import ActscopeError, DataError
from actscope.interventions.sparsify_plan import SparsityCalibration, SparsityPlan


def _calib() -> SparsityCalibration:
    plans = [
        SparsityPlan("teal", "uniform", 0.5, {"q_in.0": 0.5}, {"q_in.0": 0.125}, 0.5),
        SparsityPlan("teal", "greedy", 0.5, {"q_in.0": 0.55}, {"q_in.0": 0.15}),
    ]
    return SparsityCalibration(
        {"name": "tiny:llama", "n_layers": 2, "file_hash": "abc"},
        {"corpus_hash": "h", "fraction": 0.5, "seed": 0},
        plans,
        {0: [1.0, 2.0], 1: [0.5, 0.25]},
    )


def test_round_trip(tmp_path: Path) -> None:
    cal = _calib()
    path = cal.save(tmp_path / "t.json")
    back = SparsityCalibration.load(path)
    assert back.plan("teal", 0.5).thresholds == {"q_in.0": 0.125}
    assert back.plan("teal", 0.5, "greedy").levels == {"q_in.0": 0.55}
    assert math.isnan(back.plan("teal", 0.5, "greedy").expected_weight_sparsity)
    assert back.chess_tensors()[1].tolist() == [0.5, 0.25]
    (tmp_path / "run").mkdir()
    cal.save(tmp_path / "run" / "thresholds.json")
    assert SparsityCalibration.load(tmp_path / "run").model["name"] == "tiny:llama"


def test_lookup_and_model_checks() -> None:
    cal = _calib()
    with pytest.raises(ActscopeError, match="no wina/uniform plan at target 0.5.*teal/greedy@0.5"):
        cal.plan("wina", 0.5)
    cal.check_model("tiny:llama", 2, "abc")
    cal.check_model("tiny:llama", 2, None)
    with pytest.raises(ActscopeError, match="3 layers"):
        cal.check_model("other", 3, "abc")
    with pytest.raises(ActscopeError, match="other weights"):
        cal.check_model("tiny:llama", 2, "xyz")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        SparsityCalibration.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        SparsityCalibration.load(bad)
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(DataError, match="not an actscope thresholds file"):
        SparsityCalibration.load(bad)
    bad.write_text(json.dumps({"format": 1, "model": {}, "plans": [{"rule": "teal"}]}))
    with pytest.raises(DataError, match="malformed"):
        SparsityCalibration.load(bad)
