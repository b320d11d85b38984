"""Tokenisation helpers shared by the explain analyses: padding, target tokens, labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from actscope.errors import DataError


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (BOS when it adds one)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise DataError(f"prompt {text!r} tokenizes to nothing")
    return ids


def target_id(tokenizer: Any, text: str) -> int:
    """The first token of a continuation ``text`` (tokenized without special tokens).

    Metrics score one next token; a continuation that tokenizes to several tokens is scored
    by its first one.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise DataError(f"target {text!r} tokenizes to nothing")
    return int(ids[0])


def pad_id(tokenizer: Any) -> int:
    """The pad token id, else the EOS id, else 0 (padded positions are masked out anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0


def pad(
    seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right", device: Any = None
) -> tuple[Tensor, Tensor]:
    """Stack id lists into ``(ids, mask)`` of shape (batch, max_len); mask is 1 on real tokens."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, n - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, n - len(s) :] = 1
    return ids.to(device), mask.to(device)


def last_index(mask: Tensor) -> Tensor:
    """Index of the last real token of each row of a right- or left-padded ``mask``."""
    n = mask.shape[1]
    pos = torch.arange(n, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values
