"""Perplexity of a (possibly intervened) model on padded batches.

``perplexity = exp( sum_t NLL_t / N )`` where the sum runs over every predicted token whose
position and target are both real (padding excluded) and N counts them. Interventions are
whatever hooks are active while this runs (a Trace with edits, a steering context, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from actscope.capture.runner import forward
from actscope.utils.devices import input_device


@dataclass
class NLL:
    """Summed negative log-likelihood (nats) and token count; mergeable."""

    total: float = 0.0
    count: int = 0

    def merge(self, other: NLL) -> NLL:
        self.total += other.total
        self.count += other.count
        return self

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean) if self.count else float("nan")


def token_nll(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position NLL of the next token (B, T-1) in fp32 and the validity mask (B, T-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    valid = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    return nll, valid


def evaluate_nll(
    lm: Any,
    batches: Iterable[Any],
    progress: Callable[[int], None] | None = None,
) -> NLL:
    """Sum the next-token NLL of ``lm`` over ``batches`` (objects with input_ids/attention_mask)."""
    model = getattr(lm, "model", lm)
    device = input_device(model)
    acc = NLL()
    with torch.inference_mode():
        for batch in batches:
            b = batch.to(device) if hasattr(batch, "to") else batch
            out = forward(model, b.input_ids, b.attention_mask)
            nll, valid = token_nll(out.logits, b.input_ids, b.attention_mask)
            acc.total += float((nll * valid).sum())
            acc.count += int(valid.sum())
            if progress is not None:
                progress(int(b.attention_mask.sum()))
    return acc


def perplexity(lm: Any, batches: Iterable[Any]) -> float:
    """exp(mean next-token NLL) over the real tokens of ``batches``."""
    return evaluate_nll(lm, batches).perplexity
