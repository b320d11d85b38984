"""Linear probes find a planted linear signal, the control task catches memorisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.analyses.explain.probes import (
    collect_features,
    control_labels,
    cv_accuracy,
    fit_probes,
    probe_sites,
)
from actscope.capture import Trace
from actscope.errors import DataError


def test_planted_signal_is_found_only_where_planted() -> None:
    rng = np.random.default_rng(0)
    n, d = 200, 32
    y = rng.integers(0, 2, n)
    direction = rng.normal(size=d)
    feats = {
        "noise": rng.normal(size=(n, d)),
        "signal": rng.normal(size=(n, d)) + np.outer(2 * y - 1, direction) * 0.5,
    }
    control = control_labels(np.arange(n), y)  # one key per example: nothing to memorise
    table = fit_probes(feats, y, control, folds=5).set_index("site")
    assert table.loc["signal", "accuracy"] > 0.9
    assert abs(table.loc["noise", "accuracy"] - 0.5) < 0.12
    assert abs(table.loc["signal", "control_accuracy"] - 0.5) < 0.12
    assert table.loc["signal", "selectivity"] > 0.3


def test_control_task_exposes_memorisation() -> None:
    """Features that encode only the key: high control accuracy, low selectivity."""
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 10, 300)
    y = rng.integers(0, 2, 300)  # task labels unrelated to the features
    x = np.eye(10)[keys] * 3 + rng.normal(scale=0.1, size=(300, 10))
    table = fit_probes({"keys": x}, y, control_labels(keys, y, seed=3))
    row = table.iloc[0]
    assert row["control_accuracy"] > 0.95
    assert row["selectivity"] < -0.3


def test_control_labels_are_per_key_and_seeded() -> None:
    keys = ["a", "b", "a", "c", "b", "a"] * 10
    labels = ["t", "f"] * 30
    c1 = control_labels(keys, labels, seed=0)
    assert len({(k, v) for k, v in zip(keys, c1, strict=True)}) == 3  # constant per key
    assert set(c1) <= {"t", "f"}
    np.testing.assert_array_equal(c1, control_labels(list(reversed(keys))[::-1], labels, 0))


def test_probe_finds_a_signal_planted_in_a_model() -> None:
    """An edit adds +v or -v (by label) to resid_post.0: probes after it see the label."""
    lm = get_model("tiny:llama")
    rng = np.random.default_rng(2)
    texts = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, 12)) for _ in range(80)]
    y = rng.integers(0, 2, 80)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    sign = torch.tensor(2.0 * y - 1.0).float()

    def plant(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return value + sign[:, None, None] * v * 0.3

    sites = probe_sites(lm)
    assert sites == ["embed", "resid_post.0", "resid_post.1"]
    with Trace(lm, edits={"resid_post.0": plant}):
        feats, last = collect_features(lm, texts, sites, batch_size=len(texts))
    table = fit_probes(feats, y, control_labels(last, y)).set_index("site")
    assert table.loc["embed", "accuracy"] < 0.7
    assert table.loc["resid_post.0", "accuracy"] > 0.95
    assert table.loc["resid_post.1", "accuracy"] > 0.9
    # the control (keyed by the last letter, 26 types) is memorisable at every depth, so the
    # planted depth is the one whose selectivity stands out
    sel = table["selectivity"]
    assert sel["resid_post.0"] > sel["embed"] + 0.2


def test_mean_position_and_errors() -> None:
    lm = get_model("tiny:llama")
    feats, last = collect_features(lm, ["ab", "abcdef"], ["resid_post.0"], position="mean")
    assert feats["resid_post.0"].shape == (2, 64) and len(last) == 2
    with pytest.raises(DataError, match="position"):
        collect_features(lm, ["ab"], ["resid_post.0"], position="first")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="at least 2 examples"):
        cv_accuracy(np.zeros((1, 2)), np.array([0]))
    # a label with one example (small control tasks draw such labels): plain folds
    x = np.array([[0.0], [0.1], [0.2], [5.0]])
    acc, _ = cv_accuracy(x, np.array([0, 0, 0, 1]), folds=4)
    assert acc == pytest.approx(0.75)  # the lone label can never be learnt when held out


def test_probe_data_needs_folds_rows_of_each_label() -> None:
    from actscope.analyses.explain.study_probe import check_labels
    from actscope.errors import ActscopeError

    check_labels(["a", "b"] * 5, 5)
    with pytest.raises(DataError, match="5-fold probing needs at least 5 rows of each label"):
        check_labels(["a", "b"], 5)
    with pytest.raises(DataError, match="two distinct labels"):
        check_labels(["a"] * 10, 2)
    with pytest.raises(ActscopeError, match="folds must be >= 2"):
        check_labels(["a", "b"] * 5, 1)
