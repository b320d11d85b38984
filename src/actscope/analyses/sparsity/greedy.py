"""TEAL's greedy per-block allocation of sparsity, by block-output error.

For one block (the attention or the MLP module of one layer) with units ``u`` (each with
``n_u`` weights and a sparsity level ``s_u``, all starting at 0), one step tries raising each
unit's level by ``step`` in turn, measures the block-output error of each candidate and keeps
the one with the least error. Steps repeat until the parameter-weighted block sparsity

    S = sum_u s_u n_u / N_block            (N_block: all Linear weights of the block)

reaches the largest target asked for, or no unit can be raised (``s_u <= max_level``). The
error of a candidate is the relative squared error of the block output on the replay tokens,

    E = sum_tokens ||y_sparse - y_dense||^2 / sum_tokens ||y_dense||^2,

with the block run on the inputs it received in the dense model (captured once by
:class:`BlockInputs`), thresholds ``t_u(s_u)`` read from the calibration histograms. The
recorded path gives, for every target ``S*``, the first state with ``S >= S*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from actscope.capture.runner import forward
from actscope.capture.trace import sitemap_of
from actscope.interventions.sparsify import Sparsifier, UnitRule
from actscope.interventions.sparsify_rules import Unit

BLOCK_SITE = {"attn": "attn_in", "mlp": "mlp_in"}


@dataclass
class PathPoint:
    """One state of the greedy path: block sparsity, unit levels, block-output error."""

    sparsity: float
    levels: dict[str, float]
    error: float


class BlockInputs:
    """The arguments each attention and MLP module received during dense forward passes.

    Pre-hooks (with keyword arguments) record ``(args, kwargs)`` per call; the handles are
    owned and removed when :meth:`capture` returns.
    """

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.sitemap = sitemap_of(lm)
        self.calls: dict[tuple[int, str], list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        self.masks: list[Tensor] = []

    def module(self, layer: int, block: str) -> nn.Module:
        sm = self.sitemap
        return sm.module(sm.get(f"{BLOCK_SITE[block]}.{layer}"))

    def capture(self, batches: Sequence[Any]) -> BlockInputs:
        """Run ``batches`` through the dense model, recording every block's inputs."""
        handles = []
        try:
            for layer in range(self.sitemap.n_layers):
                for block in BLOCK_SITE:
                    handles.append(
                        self.module(layer, block).register_forward_pre_hook(
                            self._recorder(layer, block), with_kwargs=True
                        )
                    )
            device = self.lm.device
            with torch.inference_mode():
                for b in batches:
                    b = b.to(device)
                    self.masks.append(b.attention_mask.bool())
                    forward(self.lm.model, b.input_ids, b.attention_mask)
        finally:
            for h in handles:
                h.remove()
        return self

    def _recorder(self, layer: int, block: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.calls.setdefault((layer, block), []).append((args, dict(kwargs)))

        return hook


def _output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def block_error_fn(
    inputs: BlockInputs, layer: int, block: str, sparsifier: Sparsifier
) -> Callable[[], float]:
    """A function that replays the block under ``sparsifier`` and returns its relative error."""
    module = inputs.module(layer, block)
    calls = inputs.calls[(layer, block)]
    with torch.inference_mode():
        dense = [_output(module(*a, **k)) for a, k in calls]

    def error() -> float:
        num = den = 0.0
        with torch.inference_mode(), sparsifier:
            for (args, kwargs), y0, mask in zip(calls, dense, inputs.masks, strict=True):
                sparsifier.set_mask(mask)
                y = _output(module(*args, **kwargs))
                m = mask.unsqueeze(-1).to(y.dtype)
                num += float((((y - y0) * m).float() ** 2).sum())
                den += float(((y0 * m).float() ** 2).sum())
        return num / den if den > 0 else 0.0

    return error


def greedy_block(
    units: Sequence[Unit],
    rules: dict[str, UnitRule],
    threshold_at: Callable[[Unit, float], float],
    error: Callable[[], float],
    block_total: int,
    *,
    step: float,
    max_target: float,
    max_level: float = 0.95,
) -> list[PathPoint]:
    """The greedy path of one block (see the module docstring); ``rules`` are mutated."""
    levels = {u.site: 0.0 for u in units}
    by_site = {u.site: u for u in units}

    def set_levels(lv: dict[str, float]) -> None:
        for site, s in lv.items():
            rules[site].threshold = threshold_at(by_site[site], s)

    def sparsity(lv: dict[str, float]) -> float:
        return sum(lv[u.site] * u.n_weights for u in units) / block_total

    path = [PathPoint(0.0, dict(levels), 0.0)]
    while sparsity(levels) < max_target - 1e-9:
        best: tuple[float, str, float] | None = None
        for u in units:
            new = round(levels[u.site] + step, 6)
            if new > max_level + 1e-9:
                continue
            set_levels({**levels, u.site: new})
            err = error()
            if best is None or err < best[0]:
                best = (err, u.site, new)
        if best is None:
            break
        levels[best[1]] = best[2]
        path.append(PathPoint(sparsity(levels), dict(levels), best[0]))
    set_levels(levels)
    return path


def pick(path: Sequence[PathPoint], target: float) -> PathPoint:
    """The first point of ``path`` whose sparsity reaches ``target`` (else the last)."""
    for p in path:
        if p.sparsity >= target - 1e-9:
            return p
    return path[-1]
