"""Token batches for the sparsity analyses: corpus split, budget, batching, provenance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from actscope.data.batching import (
    Batch,
    default_pad_id,
    make_batches,
    policy_record,
    tokenize_corpus,
)
from actscope.data.corpus import Corpus
from actscope.errors import DataError


@dataclass
class Batches:
    """Padded batches of one corpus part, their domains and the data policy used."""

    batches: list[Batch]
    domains: tuple[str, ...]
    record: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return sum(b.n_tokens for b in self.batches)

    def tokens_per_domain(self) -> dict[str, int]:
        """Real tokens of every domain over all batches."""
        counts = torch.zeros(len(self.domains), dtype=torch.long)
        for b in self.batches:
            counts.index_add_(0, b.domain_ids, b.attention_mask.sum(dim=1))
        return {d: int(c) for d, c in zip(self.domains, counts, strict=True)}


def corpus_part(corpus: Corpus, fraction: float, seed: int, part: int) -> Corpus:
    """Part ``part`` (0 = calibration, 1 = held out) of ``corpus.split(fraction, seed)``."""
    if part not in (0, 1):
        raise DataError(f"corpus part must be 0 or 1, got {part}")
    return corpus.split(fraction, seed)[part]


def token_batches(
    lm: Any,
    corpus: Corpus,
    *,
    tokens: int,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
) -> Batches:
    """Tokenize up to ``tokens`` tokens of ``corpus`` (domains balanced) into right-padded batches."""
    lm.check_seq_len(seq_len)
    tok = tokenize_corpus(corpus, lm.tokenizer, seq_len=seq_len, max_tokens=tokens, seed=seed)
    if tok.n_tokens == 0:
        raise DataError(f"corpus {corpus.name!r} produced no tokens")
    pad = default_pad_id(lm.tokenizer)
    batches = list(make_batches(tok, batch_size=batch_size, pad_id=pad))
    record = policy_record(
        tok, padding_side="right", pad_id=pad, batch_size=batch_size, bucket=True
    )
    return Batches(batches, tok.domains, record)
