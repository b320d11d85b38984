"""Run a model over batches with a trace: the loop every analysis uses.

:func:`forward` runs one padded batch the way actscope always does: explicit position ids
computed from the attention mask (so left and right padding give the same activations for the
real tokens), no KV cache, no gradients. :func:`run` streams batches through ``forward`` with a
:class:`~actscope.capture.trace.Trace`, calling ``begin_batch``/``end_batch`` on consumers that
define them (statistics read coordinates such as token ids from the batch there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from actscope.capture.hooks import StopForward
from actscope.capture.trace import Consumer, Trace, sitemap_of
from actscope.utils.devices import input_device


class BatchLike(Protocol):
    input_ids: Tensor
    attention_mask: Tensor


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counting real tokens only: ``cumsum(mask) - 1`` clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Any:
    """One forward pass (no cache) with mask-derived position ids; returns the HF output."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        **kw,
    )


@dataclass
class RunInfo:
    """What a :func:`run` processed: batches, real tokens, padded tokens, wall seconds."""

    batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def run(
    target: Any,
    batches: Iterable[BatchLike],
    sites: str | Iterable[str],
    consumers: Iterable[Consumer],
    *,
    stop_early: bool = True,
    progress: Any = None,
) -> RunInfo:
    """Stream ``batches`` through the model, delivering ``sites`` to ``consumers``.

    ``progress`` is an optional callable ``progress(n_tokens)`` called after each batch.
    """
    sm = sitemap_of(target)
    model = sm.model
    device = input_device(model)
    consumers = list(consumers)
    info = RunInfo()
    t0 = time.perf_counter()
    # no_grad rather than inference_mode: consumer state created in hooks must stay mergeable
    # (in-place updates of inference tensors are refused outside inference mode).
    with torch.no_grad(), Trace(sm, sites, consumers=consumers, stop=stop_early) as tr:
        for batch in batches:
            b = batch.to(device) if hasattr(batch, "to") else batch
            for c in consumers:
                if hasattr(c, "begin_batch"):
                    c.begin_batch(b)
            tr.set_mask(b.attention_mask)
            with contextlib.suppress(StopForward):
                forward(model, b.input_ids, b.attention_mask)
            for c in consumers:
                if hasattr(c, "end_batch"):
                    c.end_batch(b)
            n = int(b.attention_mask.sum())
            info.batches += 1
            info.tokens += n
            info.padded_tokens += int(b.attention_mask.numel())
            if progress is not None:
                progress(n)
    info.seconds = time.perf_counter() - t0
    return info
