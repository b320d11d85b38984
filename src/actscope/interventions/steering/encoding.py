"""Tokenisation with read spans, padded batches, and padding-aware read positions.

Every position used for extraction is defined in *real-token coordinates*: index ``i`` of a row
is its ``i``-th non-padding token (``idx = cumsum(mask) - 1``), negative indices count from the
last real token. So left and right padding read exactly the same tokens, and padding is never
read as content. Read specifications:

* ``last``: the last real token of the text;
* ``answer``: the last token of the read span (the A/B letter, the end of a completion);
* ``mean``: the mean over the tokens of the read span (a token belongs to the span when its
  character range overlaps it);
* ``indices:I,J,...``: the mean over explicit real-token indices (``indices:-1`` = ``last``);
* ``trim:P,S``: the mean over the real tokens left after dropping the first ``P`` and the last
  ``S`` (the user message of a chat prompt, whose template adds fixed-length text around it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from actscope.errors import DataError
from actscope.interventions.steering.datasets import Text

ReadKind = Literal["last", "answer", "mean", "indices", "trim"]


@dataclass(frozen=True)
class Read:
    """Where a text's activation is read: ``kind`` and, for ``indices``, the indices."""

    kind: ReadKind
    indices: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind in ("indices", "trim"):
            return f"{self.kind}:" + ",".join(str(i) for i in self.indices)
        return self.kind


def parse_read(spec: str | Read) -> Read:
    """``last``, ``answer``, ``mean``, ``indices:I,J`` or ``trim:P,S`` -> :class:`Read`."""
    if isinstance(spec, Read):
        return spec
    s = spec.strip().lower()
    if s in ("last", "answer", "mean"):
        return Read(s)  # type: ignore[arg-type]
    kind, _, rest = s.partition(":")
    if kind in ("indices", "trim") and rest:
        try:
            idx = tuple(int(x) for x in rest.split(",") if x.strip())
        except ValueError:
            raise DataError(f"bad read positions in {spec!r}; expected e.g. indices:0,-1") from None
        if kind == "indices" and idx:
            return Read("indices", idx)
        if kind == "trim" and len(idx) == 2 and min(idx) >= 0:
            return Read("trim", idx)
    raise DataError(
        f"unknown read position {spec!r}; use last, answer, mean, indices:I,J or trim:P,S"
    )


@dataclass
class Encoded:
    """A padded batch: token ids, attention mask (1 = real) and the read-span mask."""

    input_ids: Tensor
    attention_mask: Tensor
    span: Tensor

    def to(self, device: torch.device | str) -> Encoded:
        return Encoded(
            self.input_ids.to(device), self.attention_mask.to(device), self.span.to(device)
        )


@dataclass(frozen=True)
class Tokens:
    """One tokenised text: ids and, per token, whether it lies in the read span."""

    ids: tuple[int, ...]
    in_span: tuple[bool, ...]


def tokenize(tokenizer: Any, texts: Sequence[Text]) -> list[Tokens]:
    """Tokenise ``texts``, marking the tokens whose character range overlaps the read span."""
    out = []
    for t in texts:
        enc = tokenizer(t.text, add_special_tokens=t.special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        s, e = t.span
        flags = [b > a and a < e and b > s for a, b in enc["offset_mapping"]]
        if not any(flags):
            raise DataError(f"the read span of {t.text[:60]!r}... covers no token")
        out.append(Tokens(tuple(ids), tuple(flags)))
    return out


def pad(rows: Sequence[Tokens], side: str, pad_id: int) -> Encoded:
    """Stack ``rows`` into a (B, T) batch padded on ``side`` (``left`` or ``right``)."""
    if side not in ("left", "right"):
        raise DataError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    span = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.ids)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(r.ids)
        mask[i, sl] = 1
        span[i, sl] = torch.tensor(r.in_span)
    return Encoded(ids, mask, span)


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padding is masked out anyway)."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def real_index(mask: Tensor) -> Tensor:
    """Real-token index of every column: ``cumsum(mask) - 1`` (padding gets -1 or a repeat)."""
    return mask.long().cumsum(-1) - 1


def read_weights(enc: Encoded, read: Read) -> Tensor:
    """(B, T) float32 weights, each row summing to 1, that average the tokens to read."""
    mask = enc.attention_mask.bool()
    idx = real_index(mask)
    n_real = mask.sum(-1, keepdim=True)
    if read.kind == "last":
        sel = mask & (idx == n_real - 1)
    elif read.kind == "answer":
        last_span = torch.where(enc.span & mask, idx, torch.full_like(idx, -1)).amax(
            -1, keepdim=True
        )
        sel = mask & (idx == last_span)
    elif read.kind == "mean":
        sel = enc.span & mask
    elif read.kind == "trim":
        first, drop_last = read.indices
        sel = mask & (idx >= first) & (idx <= n_real - 1 - drop_last)
    else:
        sel = torch.zeros_like(mask)
        for i in read.indices:
            want = n_real + i if i < 0 else torch.full_like(n_real, i)
            if bool(((want < 0) | (want >= n_real)).any()):
                raise DataError(f"read index {i} is outside a text of {int(n_real.min())} tokens")
            sel |= mask & (idx == want)
    w = sel.float()
    counts = w.sum(-1, keepdim=True)
    if bool((counts == 0).any()):
        raise DataError(f"read position '{read}' selects no token in some text")
    return w / counts


def batches(
    rows: Sequence[Tokens], batch_size: int, side: str, pad_id: int
) -> Iterator[tuple[list[int], Encoded]]:
    """Length-sorted batches of ``rows``: yields (original row indices, padded batch)."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        yield idx, pad([rows[i] for i in idx], side, pad_id)
