"""Tokenization with an explicit BOS policy, a domain-balanced token budget, and batching.

Pipeline: :func:`tokenize_corpus` turns a :class:`~actscope.data.corpus.Corpus` into
:class:`TokenSequence` chunks of at most ``seq_len`` tokens, ordered so that domains are
interleaved; :func:`make_batches` pads them into :class:`Batch` tensors; :func:`policy_record`
returns what was done, for the run manifest.

BOS policies (where massive activations appear depends on the first token, so this is explicit):

- ``"auto"``: exactly what the tokenizer does for ordinary text, ``tokenizer(text)`` with its
  default special tokens; the first chunk of a document gets the BOS if the tokenizer adds one,
  later chunks continue the document without it.
- ``"always"``: every chunk starts with ``tokenizer.bos_token_id`` followed by at most
  ``seq_len - 1`` text tokens (no other special tokens).
- ``"never"``: no special tokens at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from actscope.data.corpus import Corpus
from actscope.errors import DataError

BosPolicy = Literal["auto", "always", "never"]
PaddingSide = Literal["right", "left"]
BOS_POLICIES: tuple[str, ...] = ("auto", "always", "never")
BUCKET_BATCHES = 16
"""Batches per bucket: sequences are length-sorted within windows of this many batches."""


@dataclass(frozen=True, slots=True)
class TokenSequence:
    """Chunk ``chunk_index`` of corpus sample ``sample_index``; ``input_ids`` are real tokens."""

    sample_index: int
    chunk_index: int
    domain_index: int
    input_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class TokenizedCorpus:
    """The token sequences of a corpus and the tokenization policy that produced them."""

    sequences: tuple[TokenSequence, ...]
    domains: tuple[str, ...]
    corpus_name: str
    corpus_hash: str
    seq_len: int
    bos: str
    tokenizer_adds_bos: bool
    bos_token_id: int | None
    max_tokens: int | None
    seed: int

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[TokenSequence]:
        return iter(self.sequences)

    @property
    def n_tokens(self) -> int:
        """Total real tokens over all sequences."""
        return sum(len(s) for s in self.sequences)

    def tokens_per_domain(self) -> dict[str, int]:
        """``{domain: real tokens}`` for every domain of the corpus (0 when none was taken)."""
        counts = dict.fromkeys(self.domains, 0)
        for s in self.sequences:
            counts[self.domains[s.domain_index]] += len(s)
        return counts


@dataclass(frozen=True)
class Batch:
    """A padded batch. ``attention_mask`` is 1 on real tokens and 0 on padding.

    ``sample_ids`` index the corpus samples, ``chunk_ids`` the chunk within the sample and
    ``domain_ids`` index :attr:`domains`. All tensors are int64.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sample_ids: torch.Tensor
    domain_ids: torch.Tensor
    chunk_ids: torch.Tensor
    domains: tuple[str, ...]
    padding_side: str

    @property
    def n_tokens(self) -> int:
        """Number of real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    @property
    def lengths(self) -> torch.Tensor:
        """Real tokens per row (int64, shape B)."""
        return self.attention_mask.sum(dim=1)

    def position_ids(self) -> torch.Tensor:
        """Positions counted over real tokens only: cumsum(mask) - 1, clamped at 0.

        With left padding, pass these to the model so that the first real token has position 0
        (many models otherwise number the padding too).
        """
        return (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor moved to ``device``."""
        nb = non_blocking
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=nb),
            attention_mask=self.attention_mask.to(device, non_blocking=nb),
            sample_ids=self.sample_ids.to(device, non_blocking=nb),
            domain_ids=self.domain_ids.to(device, non_blocking=nb),
            chunk_ids=self.chunk_ids.to(device, non_blocking=nb),
            domains=self.domains,
            padding_side=self.padding_side,
        )


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` starts ordinary text with ``tokenizer.bos_token_id``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = list(tokenizer("Hello world", add_special_tokens=True)["input_ids"])
    return bos is not None and bool(ids) and ids[0] == bos


def default_pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is masked either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _chunks(ids: list[int], seq_len: int, bos_id: int | None) -> list[tuple[int, ...]]:
    """Consecutive chunks of ``ids``; with ``bos_id`` each chunk is BOS + ``seq_len - 1`` ids."""
    if bos_id is None:
        return [tuple(ids[i : i + seq_len]) for i in range(0, len(ids), seq_len)]
    step = seq_len - 1
    return [(bos_id, *ids[i : i + step]) for i in range(0, len(ids), step)]


def tokenize_corpus(
    corpus: Corpus,
    tokenizer: Any,
    *,
    seq_len: int = 256,
    bos: BosPolicy = "auto",
    max_tokens: int | None = None,
    seed: int = 0,
) -> TokenizedCorpus:
    """Tokenize ``corpus`` into chunks of at most ``seq_len`` tokens, domains interleaved.

    Order: each domain's samples are shuffled with ``random.Random(seed)``; then, repeatedly,
    the next chunk is taken from the domain that has contributed the fewest tokens so far (ties
    broken by a seeded shuffle of the domain names), so any prefix of the sequence list has
    about the same number of tokens from every domain that still has text. With
    ``max_tokens``, taking stops when the total reaches it (the last chunk is cut to fit), so
    the result holds exactly ``min(max_tokens, corpus tokens)`` real tokens. Samples are
    tokenized lazily, so a small budget on a large corpus tokenizes only what it uses.
    """
    if bos not in BOS_POLICIES:
        raise DataError(f"unknown BOS policy {bos!r}; expected one of {', '.join(BOS_POLICIES)}")
    if seq_len < (2 if bos == "always" else 1):
        raise DataError(f"seq_len must be at least {2 if bos == 'always' else 1}, got {seq_len}")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"max_tokens must be a positive integer or None, got {max_tokens}")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos == "always" and bos_id is None:
        raise DataError("BOS policy 'always' needs a tokenizer with a bos_token_id; it has none")

    rng = random.Random(seed)
    domains = corpus.domains
    queues: list[list[int]] = [[] for _ in domains]
    index = {d: k for k, d in enumerate(domains)}
    for i, sample in enumerate(corpus.samples):
        queues[index[sample.domain]].append(i)
    for q in queues:
        rng.shuffle(q)
        q.reverse()  # pop() from the end then walks the shuffled order
    tie_order = list(range(len(domains)))
    rng.shuffle(tie_order)
    rank = {d: r for r, d in enumerate(tie_order)}

    pending: list[list[TokenSequence]] = [[] for _ in domains]
    taken = [0] * len(domains)
    sequences: list[TokenSequence] = []
    total = 0
    live = set(range(len(domains)))
    while live and (max_tokens is None or total < max_tokens):
        d = min(live, key=lambda k: (taken[k], rank[k]))
        while not pending[d] and queues[d]:
            sample_index = queues[d].pop()
            text = corpus.samples[sample_index].text
            ids = list(tokenizer(text, add_special_tokens=bos == "auto")["input_ids"])
            chunks = _chunks(ids, seq_len, bos_id if bos == "always" else None)
            pending[d] = [TokenSequence(sample_index, c, d, t) for c, t in enumerate(chunks)]
            pending[d].reverse()
        if not pending[d]:
            live.discard(d)
            continue
        seq = pending[d].pop()
        if max_tokens is not None and total + len(seq) > max_tokens:
            seq = TokenSequence(
                seq.sample_index, seq.chunk_index, d, seq.input_ids[: max_tokens - total]
            )
        sequences.append(seq)
        taken[d] += len(seq)
        total += len(seq)

    return TokenizedCorpus(
        sequences=tuple(sequences),
        domains=domains,
        corpus_name=corpus.name,
        corpus_hash=corpus.hash,
        seq_len=seq_len,
        bos=bos,
        tokenizer_adds_bos=tokenizer_adds_bos(tokenizer),
        bos_token_id=bos_id,
        max_tokens=max_tokens,
        seed=seed,
    )


def _batch(
    seqs: Sequence[TokenSequence], domains: tuple[str, ...], padding_side: str, pad_id: int
) -> Batch:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(0, len(s)) if padding_side == "right" else slice(width - len(s), width)
        input_ids[row, cols] = torch.tensor(s.input_ids, dtype=torch.long)
        mask[row, cols] = 1
    return Batch(
        input_ids=input_ids,
        attention_mask=mask,
        sample_ids=torch.tensor([s.sample_index for s in seqs], dtype=torch.long),
        domain_ids=torch.tensor([s.domain_index for s in seqs], dtype=torch.long),
        chunk_ids=torch.tensor([s.chunk_index for s in seqs], dtype=torch.long),
        domains=domains,
        padding_side=padding_side,
    )


def make_batches(
    sequences: TokenizedCorpus | Iterable[TokenSequence],
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    pad_id: int = 0,
    bucket: bool = True,
    *,
    domains: tuple[str, ...] | None = None,
    bucket_batches: int = BUCKET_BATCHES,
) -> Iterator[Batch]:
    """Yield padded batches of ``batch_size`` sequences (the last may be smaller).

    Without ``bucket``, batches follow the sequence order. With ``bucket``, the sequences are
    cut into consecutive windows of ``batch_size * bucket_batches``; each window is sorted by
    decreasing length (ties keep their order) before being cut into batches, so rows of a
    batch have similar lengths and padding stays small, while the domain interleaving of
    :func:`tokenize_corpus` is kept at the scale of a window. The order is deterministic.
    ``domains`` defaults to those of a :class:`TokenizedCorpus`.
    """
    if batch_size < 1 or bucket_batches < 1:
        raise DataError(
            f"batch_size and bucket_batches must be >= 1, got {batch_size}, {bucket_batches}"
        )
    if padding_side not in ("right", "left"):
        raise DataError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if isinstance(sequences, TokenizedCorpus):
        domains = sequences.domains if domains is None else domains
        seqs = list(sequences.sequences)
    else:
        seqs = list(sequences)
    if domains is None:
        raise DataError("make_batches needs `domains` when given plain TokenSequence objects")
    window = batch_size * bucket_batches if bucket else batch_size
    for start in range(0, len(seqs), window):
        group = seqs[start : start + window]
        if bucket:
            group = sorted(group, key=len, reverse=True)  # stable: ties keep sequence order
        for b in range(0, len(group), batch_size):
            yield _batch(group[b : b + batch_size], domains, padding_side, pad_id)


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Padding positions / all positions over ``batches`` (0.0 for no batches)."""
    pad = cells = 0
    for b in batches:
        cells += b.attention_mask.numel()
        pad += b.attention_mask.numel() - b.n_tokens
    return pad / cells if cells else 0.0


def policy_record(
    tokenized: TokenizedCorpus,
    *,
    padding_side: str,
    pad_id: int,
    batch_size: int | None = None,
    bucket: bool | None = None,
) -> dict[str, Any]:
    """The data policy actually used, as a JSON-ready dict for run manifests."""
    return {
        "corpus": tokenized.corpus_name,
        "corpus_hash": tokenized.corpus_hash,
        "domains": list(tokenized.domains),
        "bos_policy": tokenized.bos,
        "tokenizer_adds_bos": tokenized.tokenizer_adds_bos,
        "bos_token_id": tokenized.bos_token_id,
        "seq_len": tokenized.seq_len,
        "padding_side": padding_side,
        "pad_id": pad_id,
        "batch_size": batch_size,
        "bucket": bucket,
        "max_tokens": tokenized.max_tokens,
        "seed": tokenized.seed,
        "tokens_used": tokenized.n_tokens,
        "n_sequences": len(tokenized),
        "n_samples": len({s.sample_index for s in tokenized.sequences}),
        "tokens_per_domain": tokenized.tokens_per_domain(),
    }
