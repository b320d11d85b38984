"""Perplexity sweep: the unquantized row equals plain perplexity; smoothing alone is lossless."""

from __future__ import annotations

import math

import pytest
import torch
from tests._models import get_model

from actscope.analyses.perplexity import perplexity
from actscope.analyses.quant import perplexity_sweep
from actscope.data import Batch
from actscope.errors import ActscopeError
from actscope.interventions.quant import linear_modules


def _batches() -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 15:] = 0
    z = torch.zeros(4, dtype=torch.long)
    return [Batch(ids, mask, torch.arange(4), z, z, ("prose",), "right")]


def test_sweep_rows_and_controls() -> None:
    lm = get_model("tiny:llama", "fp32")
    batches = _batches()
    scales = {n: torch.rand(m.weight.shape[1]) + 0.5 for n, m in linear_modules(lm).items()}
    df = perplexity_sweep(
        lm, batches, scales, schemes=["W8A8", "W4A16", "W8A8-static"], alphas=[0.5, 0.8]
    )
    assert len(df) == 1 + 3 + 1 + 2 * 2  # W4A16 quantizes no activation: no smoothing rows
    fp = df[(df.scheme == "fp") & ~df.smoothing].iloc[0]
    assert fp.perplexity == pytest.approx(perplexity(lm, batches), rel=1e-6)
    assert fp.tokens == 3 * 23 + 14
    ctrl = df[(df.scheme == "fp") & df.smoothing].iloc[0]
    assert ctrl.perplexity == pytest.approx(fp.perplexity, rel=1e-5)  # folding is exact in fp32
    w8 = df[(df.scheme == "W8A8") & ~df.smoothing].iloc[0]
    assert w8.perplexity != fp.perplexity and math.isfinite(w8.perplexity)
    assert df.delta_ppl.iloc[0] == 0.0
    assert df[~df.smoothing].recovered.isna().all()


def test_unknown_scheme() -> None:
    lm = get_model("tiny:llama", "fp32")
    with pytest.raises(ActscopeError, match="unknown scheme"):
        perplexity_sweep(lm, _batches(), {}, schemes=["W3A3"])
