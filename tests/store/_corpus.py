"""A small deterministic corpus for store and distributed tests (independent of the default)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from actscope.data import Corpus, Sample, load_corpus

_WORDS = {
    "prose": [
        "the",
        "river",
        "ran",
        "past",
        "old",
        "mills",
        "while",
        "a",
        "heron",
        "waited",
        "in",
        "the",
        "reeds",
    ],
    "code": [
        "def",
        "return",
        "for",
        "in",
        "range",
        "if",
        "else",
        "print",
        "len",
        "x",
        "y",
        "=",
        "+",
        "(",
        ")",
        ":",
    ],
    "math": [
        "let",
        "n",
        "be",
        "an",
        "integer",
        "then",
        "2",
        "n",
        "+",
        "1",
        "is",
        "odd",
        "so",
        "the",
        "sum",
        "of",
        "odd",
        "terms",
    ],
}


def small_samples(n: int = 60, seed: int = 0) -> list[Sample]:
    """``n`` samples over three domains, 3 to 40 words each, fixed by ``seed``."""
    rng = random.Random(seed)
    out = []
    domains = sorted(_WORDS)
    for i in range(n):
        domain = domains[i % len(domains)]
        words = [rng.choice(_WORDS[domain]) for _ in range(rng.randint(3, 40))]
        out.append(Sample(f"s{i:03d}", domain, " ".join(words), "test"))
    return out


def small_corpus(n: int = 60) -> Corpus:
    return Corpus(small_samples(n), "small")


def write_corpus(path: Path, n: int = 60) -> Path:
    """Write the small corpus as JSONL and return the path (``load_corpus`` reads it back)."""
    lines = [json.dumps({"id": s.id, "domain": s.domain, "text": s.text}) for s in small_samples(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(load_corpus(path)) == n
    return path
