"""CETT (Sparsing Law): how much of an MLP's output the small neurons carry.

For one MLP with down projection ``W`` (``d x m``) and intermediate activation ``a`` (the
down-projection input, ``m`` neurons) of a token, neuron ``i`` is *inactive* at threshold ``t``
when ``|a_i| * ||W[:, i]||_2 <= t``. With ``m_t`` the 0/1 vector of inactive neurons,

    CETT(t) = mean over tokens of ||W (a * m_t)||_2 / ||W a||_2,

tokens with ``W a = 0`` excluded. CETT grows monotonically with ``t``.
:func:`cett_threshold` finds, by bisection on ``t`` in ``[0, max score]``, the largest ``t``
with ``CETT(t) <= target``; the *activation ratio* is then ``1 -`` (fraction of inactive
neurons over tokens and neurons). Everything is computed in float32 on the given tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class CettResult:
    """Threshold found, CETT reached there, activation ratio and token count."""

    threshold: float
    cett: float
    activation_ratio: float
    n_tokens: int


def cett(a: Tensor, weight: Tensor, threshold: float, colnorm: Tensor | None = None) -> float:
    """CETT(threshold) of activations ``a`` (tokens x m) for down weight ``weight`` (d x m)."""
    w = weight.float()
    a = a.float()
    norms = w.norm(dim=0) if colnorm is None else colnorm.float()
    full = (a @ w.t()).norm(dim=-1)
    part = ((a * ((a.abs() * norms) <= threshold)) @ w.t()).norm(dim=-1)
    ok = full > 0
    return float((part[ok] / full[ok]).mean()) if bool(ok.any()) else float("nan")


def cett_threshold(
    a: Tensor, weight: Tensor, target: float, *, iters: int = 40, tol: float = 1e-4
) -> CettResult:
    """Largest ``t`` with ``CETT(t) <= target`` by bisection (``iters`` steps at most).

    Stops early once ``CETT(t)`` is within ``tol`` of ``target`` from below.
    """
    w = weight.float()
    a = a.float()
    if a.shape[0] == 0:
        return CettResult(float("nan"), float("nan"), float("nan"), 0)
    norms = w.norm(dim=0)
    score = a.abs() * norms
    full = (a @ w.t()).norm(dim=-1)
    ok = full > 0
    a, score, full = a[ok], score[ok], full[ok]

    def value(t: float) -> float:
        part = ((a * (score <= t)) @ w.t()).norm(dim=-1)
        return float((part / full).mean())

    lo, hi = 0.0, float(score.max())
    best_t, best_c = lo, value(lo)
    if best_c > target:  # exact zeros alone exceed the target: nothing can be dropped
        return CettResult(0.0, best_c, float(1.0 - (score <= 0).float().mean()), int(a.shape[0]))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        c = value(mid)
        if c <= target:
            lo, best_t, best_c = mid, mid, c
            if target - c <= tol:
                break
        else:
            hi = mid
    ratio = float(1.0 - (score <= best_t).float().mean())
    return CettResult(best_t, best_c, ratio, int(a.shape[0]))
