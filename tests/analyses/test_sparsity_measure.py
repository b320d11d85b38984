"""`measure_sparsity`: zero and below-eps fractions per domain against a direct count."""

from __future__ import annotations

import random

import torch
from tests._models import get_model

from actscope.analyses.sparsity import measure_sparsity, token_batches
from actscope.analyses.sparsity.measure import ALL, eps_column
from actscope.capture import Trace, forward
from actscope.data import Corpus, Sample


def _corpus(n: int = 16) -> Corpus:
    rng = random.Random(0)
    vocab = {
        "prose": ["the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell"],
        "code": ["def", "f", "(", "x", ")", ":", "return", "x", "+", "1", ";"],
    }
    samples = [
        Sample(f"s{i}", dom, " ".join(rng.choice(vocab[dom]) for _ in range(120)))
        for i in range(n)
        for dom in [("prose", "code")[i % 2]]
    ]
    return Corpus(samples, "synthetic")


def test_counts_match_a_direct_computation_per_domain() -> None:
    lm = get_model("tiny:llama")
    data = token_batches(lm, _corpus(), tokens=600, seq_len=64, batch_size=4)
    res = measure_sparsity(lm, data, eps=(0.05,), cett_tokens=32)
    sites = ["down_in.1", "q_in.0"]
    direct = {(d, s): [0, 0, 0] for d in (*data.domains, ALL) for s in sites}
    with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
        for b in data.batches:
            forward(lm.model, b.input_ids, b.attention_mask)
            for s in sites:
                v = tr[s]
                for row in range(v.shape[0]):
                    real = v[row][b.attention_mask[row].bool()]
                    for key in ((data.domains[int(b.domain_ids[row])], s), (ALL, s)):
                        direct[key][0] += real.numel()
                        direct[key][1] += int((real == 0).sum())
                        direct[key][2] += int((real.abs() < 0.05).sum())
    z = res.zeros.set_index(["domain", "site"])
    for (dom, site), (n, zero, small) in direct.items():
        row = z.loc[(dom, site)]
        assert int(row.entries) == n
        assert row.frac_zero == zero / n
        assert row[eps_column(0.05)] == small / n
    assert set(res.zeros.linear) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_cett_rows_per_domain_and_pooled() -> None:
    lm = get_model("tiny:llama")
    data = token_batches(lm, _corpus(), tokens=600, seq_len=64, batch_size=4)
    res = measure_sparsity(lm, data, cett_target=0.1, cett_tokens=40)
    c = res.cett
    assert set(c.domain) == {"prose", "code", ALL} and set(c.layer) == {0, 1}
    assert (c[c.domain != ALL].n_tokens <= 40).all()
    pooled = c[c.domain == ALL].set_index("layer").n_tokens
    per = c[c.domain != ALL].groupby("layer").n_tokens.sum()
    assert (pooled == per).all()
    assert (c.cett <= 0.1 + 1e-9).all() and (
        (c.activation_ratio > 0) & (c.activation_ratio <= 1)
    ).all()
