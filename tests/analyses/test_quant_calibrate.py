"""Calibration fitting: exact percentile ranges, asymmetric ranges, the MSE clip search."""

from __future__ import annotations

import pytest
import torch

from actscope.analyses.quant import Calibrator, SiteGroup
from actscope.analyses.quant.groups import Consumer
from actscope.interventions.quant import QuantSpec, Range, fake_quantize
from actscope.sites import Site


def _group(consumers: list[Consumer] | None = None) -> SiteGroup:
    site = Site("x_in.0", "x_in", 0, None, "m", "in")
    return SiteGroup([site], consumers or [])


def _data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, generator=g)
    x[::50, 3] = 40.0  # a few large entries in one channel
    x[7, 9] = -55.0
    return x.to(torch.bfloat16)


def _same(a: Range, b: Range) -> None:
    assert a.lo == pytest.approx(b.lo, rel=1e-12) and a.hi == pytest.approx(b.hi, rel=1e-12)


def test_percentile_and_asymmetric_ranges_are_exact() -> None:
    x = _data()
    cal = Calibrator([_group()])
    for part in x.split(100):
        cal("x_in.0", part, None)
    specs = [
        QuantSpec.parse(s)
        for s in ("int8-sym-tensor-p99.9", "int4-asym-tensor-p99", "int8-asym-tensor-max")
    ]
    fit = cal.fit(specs)
    xd = x.double().flatten()
    assert fit.exact
    c = float(torch.quantile(xd.abs(), 0.999))
    _same(fit.ranges[("x_in.0", specs[0].name)], Range(-c, c))
    lo, hi = (float(v) for v in torch.quantile(xd, torch.tensor([0.01, 0.99], dtype=torch.float64)))
    _same(fit.ranges[("x_in.0", specs[1].name)], Range(lo, hi))
    _same(fit.ranges[("x_in.0", specs[2].name)], Range(float(xd.min()), float(xd.max())))
    assert fit.abs_max["x_in.0"] == 55.0


@pytest.mark.parametrize("name", ["int4-sym-tensor-mse", "int4-sym-token-mse"])
def test_mse_search_finds_the_grid_minimum(name: str) -> None:
    x = _data(1)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 32, generator=g)
    spec = QuantSpec.parse(name)
    cal = Calibrator([_group([Consumer("x_in.0", "m", w)])], mse_tokens=10_000)
    cal("x_in.0", x, None)
    fit = cal.fit([spec])
    r = fit.ratios[("x_in.0", spec.name)]
    xf = x.float()
    base = float(xf.abs().max())

    def objective(ratio: float) -> float:
        if spec.granularity == "tensor":
            q, _ = fake_quantize(xf, spec, static=Range.symmetric(base * ratio))
        else:
            q, _ = fake_quantize(xf, spec, ratio=ratio)
        return float(((q - xf) @ w.T).square().sum())

    grid = [2.0 ** (-k / 8) for k in range(0, 8 * 10)]
    best = min(grid, key=objective)
    assert objective(r) <= objective(1.0)
    assert objective(r) <= 1.02 * objective(best)
    if spec.granularity == "tensor":
        assert fit.ranges[("x_in.0", spec.name)].hi == pytest.approx(base * r)
