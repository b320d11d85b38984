"""Small synthetic corpora shared by the tests."""

from __future__ import annotations

import random

from actscope.data.corpus import Corpus, Sample

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def word_corpus(n: int, words_per_sample: int = 150, seed: int = 1) -> Corpus:
    """``n`` samples of random Greek-letter words in two domains, ``a`` and ``b``."""
    rng = random.Random(seed)
    samples = [
        Sample(
            f"s{i}",
            ("a", "b")[i % 2],
            " ".join(rng.choice(WORDS) for _ in range(words_per_sample)),
        )
        for i in range(n)
    ]
    return Corpus(samples, "synthetic")
