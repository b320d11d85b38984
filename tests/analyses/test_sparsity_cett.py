"""CETT and its bisection against a direct per-token computation."""

from __future__ import annotations

import torch

from actscope.analyses.sparsity.cett import cett, cett_threshold


def _direct_cett(a: torch.Tensor, w: torch.Tensor, t: float) -> float:
    vals = []
    norms = [float(w[:, i].norm()) for i in range(w.shape[1])]
    for row in a:
        inactive = torch.tensor([abs(float(row[i])) * norms[i] <= t for i in range(len(row))])
        full = (w @ row).norm()
        if full > 0:
            vals.append(float((w @ (row * inactive)).norm() / full))
    return sum(vals) / len(vals)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 12, generator=g) * torch.rand(20, 12, generator=g) ** 3
    w = torch.randn(6, 12, generator=g)
    return a, w


def test_cett_matches_the_definition() -> None:
    a, w = _data()
    for t in (0.0, 0.05, 0.3, 1.0, 100.0):
        assert abs(cett(a, w, t) - _direct_cett(a, w, t)) < 1e-5
    assert abs(cett(a, w, 1e9) - 1.0) < 1e-6


def test_bisection_finds_the_largest_threshold_under_the_target() -> None:
    a, w = _data(1)
    res = cett_threshold(a, w, 0.2, iters=60, tol=0.0)
    assert res.cett <= 0.2 + 1e-9
    assert abs(res.cett - cett(a, w, res.threshold)) < 1e-6
    scores = (a.abs() * w.norm(dim=0)).flatten().sort().values
    nxt = scores[scores > res.threshold]
    if len(nxt):  # the next score up would push CETT past the target
        assert cett(a, w, float(nxt[0])) > 0.2
    inactive = (a.abs() * w.norm(dim=0) <= res.threshold).float().mean()
    assert abs(res.activation_ratio - (1 - float(inactive))) < 1e-6
    assert res.n_tokens == 20


def test_degenerate_inputs() -> None:
    _, w = _data()
    empty = cett_threshold(torch.zeros(0, 12), w, 0.2)
    assert empty.n_tokens == 0
    zeros = torch.zeros(4, 12)
    zeros[:, 0] = 1.0  # only neuron 0 is ever active
    res = cett_threshold(zeros, w, 0.2)
    assert abs(res.activation_ratio - 1.0 / 12) < 1e-6 and res.cett == 0.0
