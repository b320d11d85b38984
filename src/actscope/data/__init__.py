"""Corpora and batching: the embedded default corpus, user corpus loaders, tokenization.

Typical use::

    corpus = load_corpus("default")  # or a .txt / .jsonl / .parquet / dataset folder path
    calibration, evaluation = corpus.split(0.5, seed=0)
    tokens = tokenize_corpus(calibration, tokenizer, seq_len=256, bos="auto", max_tokens=100_000)
    pad = default_pad_id(tokenizer)
    for batch in make_batches(tokens, batch_size=8, padding_side="right", pad_id=pad):
        ...
    manifest["data"] = policy_record(tokens, padding_side="right", pad_id=pad, batch_size=8)
"""

from actscope.data.batching import (
    BOS_POLICIES,
    Batch,
    TokenizedCorpus,
    TokenSequence,
    default_pad_id,
    make_batches,
    padding_fraction,
    policy_record,
    tokenize_corpus,
    tokenizer_adds_bos,
)
from actscope.data.corpus import UNLABELED, Corpus, Sample
from actscope.data.loaders import DEFAULT_CORPUS_FILE, DEFAULT_CORPUS_SHA256, load_corpus, read_text

__all__ = [
    "BOS_POLICIES",
    "DEFAULT_CORPUS_FILE",
    "DEFAULT_CORPUS_SHA256",
    "UNLABELED",
    "Batch",
    "Corpus",
    "Sample",
    "TokenSequence",
    "TokenizedCorpus",
    "default_pad_id",
    "load_corpus",
    "make_batches",
    "padding_fraction",
    "policy_record",
    "read_text",
    "tokenize_corpus",
    "tokenizer_adds_bos",
]
