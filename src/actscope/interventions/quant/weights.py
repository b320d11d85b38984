"""Weight fake quantization (round-to-nearest) of Linear layers, undone on exit.

A weight ``W`` of shape ``(out, in)`` is quantized with the grids of
:mod:`actscope.interventions.quant.fake`; for weights the granularity names mean:

* ``channel``: one scale per output channel (row of ``W``, over the input dimension);
* ``group``: one scale per ``g`` consecutive input columns of each row (the last group holds
  the remainder when ``g`` does not divide ``in``);
* ``tensor``: one scale for the whole matrix.

The clip rule applies inside each block (``max``, exact percentiles, or ``mse``: the ratio of
the block max in ``{1, 0.95, ..., 0.5}`` that minimises the block's squared weight error).
The quantized weight is computed in float32 and stored back in the weight's dtype: for a
bfloat16 model the grid points themselves are rounded to bfloat16 (relative error <= 2^-9).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from actscope.interventions.quant.fake import BlockView, quantize_range
from actscope.interventions.quant.spec import QuantSpec, QuantSpecError

_WEIGHT_GRAN = {"channel": "token", "group": "group", "tensor": "tensor"}
_MSE_RATIOS = tuple(1.0 - 0.05 * k for k in range(11))


def weight_matrix(module: nn.Module) -> Tensor:
    """The ``(out, in)`` weight of a Linear (GPT-2 ``Conv1D`` stores ``(in, out)``)."""
    w = module.weight
    if type(module).__name__ == "Conv1D":
        return w.t()
    return w


def quantize_weight(w: Tensor, spec: QuantSpec) -> Tensor:
    """Fake-quantized copy of ``w`` (``(out, in)``), in ``w``'s dtype (see module docstring)."""
    if spec.granularity not in _WEIGHT_GRAN:
        raise QuantSpecError(
            f"weights are quantized per channel, group or tensor, not per {spec.granularity}"
        )
    view = BlockView(w.detach().float(), _WEIGHT_GRAN[spec.granularity], spec.group_size)
    if spec.clip != "mse":
        lo, hi = view.block_range(spec)
        qb, _ = quantize_range(view.blocks, lo, hi, spec)
        return view.unblock(qb).to(w.dtype)
    best_q: Tensor | None = None
    best_err: Tensor | None = None
    for r in _MSE_RATIOS:
        lo, hi = view.block_range(spec, r)
        qb, _ = quantize_range(view.blocks, lo, hi, spec)
        err = (qb - view.blocks).square().sum(dim=-1, keepdim=True)
        if best_q is None or best_err is None:
            best_q, best_err = qb, err
        else:
            better = err < best_err
            best_q = torch.where(better, qb, best_q)
            best_err = torch.minimum(err, best_err)
    assert best_q is not None
    return view.unblock(best_q).to(w.dtype)


@contextlib.contextmanager
def quantized_weights(modules: Mapping[str, nn.Module], spec: QuantSpec) -> Iterator[None]:
    """Replace the weights of ``modules`` by fake-quantized copies; restore them on exit."""
    saved: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, mod in modules.items():
                w = weight_matrix(mod)
                q = quantize_weight(w, spec)
                saved[name] = mod.weight.data
                mod.weight.data = q.t().contiguous() if w is not mod.weight else q
        yield
    finally:
        for name, data in saved.items():
            modules[name].weight.data = data
