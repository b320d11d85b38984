"""Helpers shared by the sparsity tests."""

from __future__ import annotations

from typing import Any

import torch

from actscope.capture import forward
from actscope.interventions.sparsify import Sparsifier


def run_plan(lm: Any, plan: Any, calibration: Any, data: Any) -> Sparsifier:
    """Run ``data``'s batches with ``plan`` applied; the Sparsifier holds the realised counts."""
    sp = Sparsifier.from_plan(lm, plan, calibration)
    with torch.inference_mode(), sp:
        for b in data.batches:
            sp.set_mask(b.attention_mask)
            forward(lm.model, b.input_ids, b.attention_mask)
    return sp
