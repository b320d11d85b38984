from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import torch
from tests._corpora import WORDS

from actscope.data.batching import (
    TokenSequence,
    default_pad_id,
    make_batches,
    padding_fraction,
    policy_record,
    tokenize_corpus,
    tokenizer_adds_bos,
)
from actscope.data.corpus import Corpus, Sample
from actscope.errors import DataError


def toy_corpus() -> Corpus:
    """Three domains with documents of very different lengths (5 to ~300 words)."""
    samples = []
    for d, domain in enumerate(("code", "math", "prose")):
        for i in range(12):
            n_words = 5 + ((i * 37 + d * 11) % 60) * 5
            text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words))
            samples.append(Sample(f"{domain}-{i}", domain, f"{domain} {i}: {text}."))
    return Corpus(samples, "toy")


def ids_of(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def by_sample(tokenized: Any) -> dict[int, list[TokenSequence]]:
    out: dict[int, list[TokenSequence]] = {}
    for s in tokenized.sequences:
        out.setdefault(s.sample_index, []).append(s)
    return {k: sorted(v, key=lambda s: s.chunk_index) for k, v in out.items()}


def test_never_chunks_reassemble_exactly(tiny_bos_tokenizer: Any) -> None:
    c = toy_corpus()
    tok = tokenize_corpus(c, tiny_bos_tokenizer, seq_len=16, bos="never")
    chunks = by_sample(tok)
    assert set(chunks) == set(range(len(c)))
    for i, seqs in chunks.items():
        assert [s.chunk_index for s in seqs] == list(range(len(seqs)))
        assert all(1 <= len(s) <= 16 for s in seqs)
        assert all(len(s) == 16 for s in seqs[:-1])
        joined = [t for s in seqs for t in s.input_ids]
        assert joined == ids_of(tiny_bos_tokenizer, c[i].text, special=False)
        assert all(s.domain_index == c.domains.index(c[i].domain) for s in seqs)


def test_auto_follows_tokenizer_default(tiny_tokenizer: Any, tiny_bos_tokenizer: Any) -> None:
    c = toy_corpus()
    bos = tiny_bos_tokenizer.bos_token_id
    assert tokenizer_adds_bos(tiny_bos_tokenizer) and not tokenizer_adds_bos(tiny_tokenizer)
    with_bos = tokenize_corpus(c, tiny_bos_tokenizer, seq_len=16, bos="auto")
    assert with_bos.tokenizer_adds_bos
    for i, seqs in by_sample(with_bos).items():
        joined = [t for s in seqs for t in s.input_ids]
        assert joined == ids_of(tiny_bos_tokenizer, c[i].text, special=True)
        assert seqs[0].input_ids[0] == bos
        assert all(bos not in s.input_ids for s in seqs[1:])
    plain = tokenize_corpus(c, tiny_tokenizer, seq_len=16, bos="auto")
    assert not plain.tokenizer_adds_bos
    assert all(bos not in s.input_ids for s in plain.sequences)


@pytest.mark.parametrize("fixture", ["tiny_tokenizer", "tiny_bos_tokenizer"])
def test_always_puts_bos_on_every_chunk(fixture: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(fixture)
    c = toy_corpus()
    bos = tokenizer.bos_token_id
    tok = tokenize_corpus(c, tokenizer, seq_len=16, bos="always")
    for i, seqs in by_sample(tok).items():
        assert all(s.input_ids[0] == bos and bos not in s.input_ids[1:] for s in seqs)
        assert all(len(s) <= 16 for s in seqs)
        text_ids = [t for s in seqs for t in s.input_ids[1:]]
        assert text_ids == ids_of(tokenizer, c[i].text, special=False)


def test_policy_errors(tiny_tokenizer: Any) -> None:
    c = toy_corpus()
    with pytest.raises(DataError, match="unknown BOS policy 'sometimes'"):
        tokenize_corpus(c, tiny_tokenizer, bos="sometimes")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="seq_len must be at least 2"):
        tokenize_corpus(c, tiny_tokenizer, seq_len=1, bos="always")
    with pytest.raises(DataError, match="max_tokens must be a positive integer"):
        tokenize_corpus(c, tiny_tokenizer, max_tokens=0)

    class NoBos:
        bos_token_id = None

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [ord(ch) for ch in text]}

    with pytest.raises(DataError, match="needs a tokenizer with a bos_token_id"):
        tokenize_corpus(c, NoBos(), bos="always")
    assert len(tokenize_corpus(c, NoBos(), bos="never").sequences) > 0


def test_max_tokens_exact_and_balanced(tiny_tokenizer: Any) -> None:
    c = toy_corpus()
    full = tokenize_corpus(c, tiny_tokenizer, seq_len=32, bos="never")
    budget = full.n_tokens // 4
    tok = tokenize_corpus(c, tiny_tokenizer, seq_len=32, bos="never", max_tokens=budget)
    assert tok.n_tokens == budget
    per = tok.tokens_per_domain()
    assert set(per) == set(c.domains)
    assert max(per.values()) - min(per.values()) <= 32  # within one chunk of each other
    # every prefix of the order stays balanced too
    running = Counter[int]()
    for s in tok.sequences:
        running[s.domain_index] += len(s)
        if len(running) == 3:
            assert max(running.values()) - min(running.values()) <= 32
    huge = tokenize_corpus(c, tiny_tokenizer, seq_len=32, bos="never", max_tokens=10**9)
    assert huge.n_tokens == full.n_tokens


def test_budget_keeps_going_when_a_domain_runs_out(tiny_tokenizer: Any) -> None:
    samples = [
        Sample("short", "a", "tiny"),
        *(Sample(f"b{i}", "b", " ".join(WORDS)) for i in range(5)),
    ]
    tok = tokenize_corpus(Corpus(samples), tiny_tokenizer, seq_len=8, bos="never", max_tokens=40)
    per = tok.tokens_per_domain()
    assert tok.n_tokens == 40
    assert per["a"] == len(ids_of(tiny_tokenizer, "tiny", special=False))


def test_order_deterministic_and_seeded(tiny_tokenizer: Any) -> None:
    c = toy_corpus()

    def key(seed: int) -> list[tuple[int, int]]:
        t = tokenize_corpus(c, tiny_tokenizer, seq_len=32, bos="never", seed=seed)
        return [(s.sample_index, s.chunk_index) for s in t.sequences]

    assert key(0) == key(0)
    assert key(0) != key(1)
    assert sorted(key(0)) == sorted(key(1))


def all_rows(batches: list[Any]) -> list[tuple[int, int, tuple[int, ...]]]:
    rows = []
    for b in batches:
        for r in range(b.input_ids.shape[0]):
            real = b.input_ids[r][b.attention_mask[r].bool()].tolist()
            rows.append((int(b.sample_ids[r]), int(b.chunk_ids[r]), tuple(real)))
    return rows


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bucket", [True, False])
def test_batches_pad_correctly_and_lose_nothing(
    tiny_tokenizer: Any, side: str, bucket: bool
) -> None:
    corpus = toy_corpus()
    tok = tokenize_corpus(corpus, tiny_tokenizer, seq_len=24, bos="never")
    pad = default_pad_id(tiny_tokenizer)
    batches = list(
        make_batches(
            tok, batch_size=5, padding_side=side, pad_id=pad, bucket=bucket, bucket_batches=3
        )
    )  # type: ignore[arg-type]
    assert all(b.input_ids.shape[0] <= 5 for b in batches)
    expected = Counter((s.sample_index, s.chunk_index, s.input_ids) for s in tok.sequences)
    assert Counter(all_rows(batches)) == expected
    assert sum(b.n_tokens for b in batches) == tok.n_tokens
    for b in batches:
        assert b.input_ids.dtype == b.attention_mask.dtype == b.sample_ids.dtype == torch.long
        assert b.padding_side == side and b.domains == tok.domains
        mask = b.attention_mask
        assert set(mask.unique().tolist()) <= {0, 1}
        assert torch.all(b.input_ids[mask == 0] == pad)
        # real tokens are contiguous, at the start (right padding) or the end (left padding)
        lengths = mask.sum(1)
        cols = torch.arange(mask.shape[1])
        if side == "right":
            assert torch.equal(mask, (cols[None, :] < lengths[:, None]).long())
        else:
            assert torch.equal(mask, (cols[None, :] >= mask.shape[1] - lengths[:, None]).long())
        assert lengths.max() == mask.shape[1]
        assert torch.equal(b.lengths, lengths)
        domains_of_rows = [tok.domains.index(corpus[int(i)].domain) for i in b.sample_ids]
        assert b.domain_ids.tolist() == domains_of_rows


def test_position_ids_count_real_tokens(tiny_tokenizer: Any) -> None:
    seqs = [TokenSequence(0, 0, 0, (5, 6, 7)), TokenSequence(1, 0, 0, (8,))]
    (b,) = make_batches(seqs, batch_size=2, padding_side="left", pad_id=0, domains=("d",))
    assert b.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.position_ids().tolist() == [[0, 1, 2], [0, 0, 0]]
    moved = b.to("cpu")
    assert torch.equal(moved.input_ids, b.input_ids) and moved.domains == ("d",)


def test_bucketing_reduces_padding(tiny_tokenizer: Any) -> None:
    tok = tokenize_corpus(toy_corpus(), tiny_tokenizer, seq_len=4096, bos="never")
    plain = padding_fraction(make_batches(tok, batch_size=4, bucket=False))
    bucketed = padding_fraction(make_batches(tok, batch_size=4, bucket=True))
    assert bucketed < plain
    assert bucketed < 0.5 * plain


def test_bucketing_is_deterministic(tiny_tokenizer: Any) -> None:
    tok = tokenize_corpus(toy_corpus(), tiny_tokenizer, seq_len=64, bos="never")
    a = [b.sample_ids.tolist() for b in make_batches(tok, batch_size=4)]
    b = [b.sample_ids.tolist() for b in make_batches(tok, batch_size=4)]
    assert a == b


def test_make_batches_errors() -> None:
    seqs = [TokenSequence(0, 0, 0, (1,))]
    with pytest.raises(DataError, match="batch_size"):
        list(make_batches(seqs, batch_size=0, domains=("d",)))
    with pytest.raises(DataError, match="padding_side"):
        list(make_batches(seqs, padding_side="middle", domains=("d",)))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="needs `domains`"):
        list(make_batches(seqs))


def test_policy_record_is_json_and_complete(tiny_bos_tokenizer: Any) -> None:
    tok = tokenize_corpus(toy_corpus(), tiny_bos_tokenizer, seq_len=32, bos="auto", max_tokens=500)
    rec = policy_record(tok, padding_side="left", pad_id=0, batch_size=8, bucket=True)
    assert json.loads(json.dumps(rec)) == rec
    assert rec["bos_policy"] == "auto" and rec["tokenizer_adds_bos"] is True
    assert rec["bos_token_id"] == tiny_bos_tokenizer.bos_token_id
    assert (rec["seq_len"], rec["padding_side"], rec["pad_id"]) == (32, "left", 0)
    assert rec["max_tokens"] == 500 and rec["tokens_used"] == 500
    assert sum(rec["tokens_per_domain"].values()) == 500
    assert rec["corpus"] == "toy" and rec["corpus_hash"] == toy_corpus().hash


def test_default_pad_id_fallbacks(tiny_tokenizer: Any) -> None:
    assert default_pad_id(tiny_tokenizer) == tiny_tokenizer.pad_token_id

    class EosOnly:
        pad_token_id = None
        eos_token_id = 7

    assert default_pad_id(EosOnly()) == 7
    assert default_pad_id(object()) == 0
