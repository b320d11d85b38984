from __future__ import annotations

import hashlib
import pickle

import pytest

from actscope.data.corpus import Corpus, Sample
from actscope.errors import DataError


def make_corpus(n_per_domain: int = 20, domains: tuple[str, ...] = ("b", "a", "c")) -> Corpus:
    samples = [
        Sample(f"{d}-{i}", d, f"text {d} {i} " * (i + 1), "test")
        for d in domains
        for i in range(n_per_domain)
    ]
    return Corpus(samples, "toy")


def test_domains_sorted_and_mix_counts() -> None:
    c = make_corpus(3)
    assert c.domains == ("a", "b", "c")
    mix = c.domain_mix()
    assert list(mix) == ["a", "b", "c"]
    assert mix["a"]["samples"] == 3
    assert mix["a"]["chars"] == sum(len(s.text) for s in c if s.domain == "a")


def test_hash_matches_formula_and_is_order_and_text_sensitive() -> None:
    samples = [Sample("x", "d", "héllo"), Sample("y", "d", "world")]
    expected = hashlib.sha256(b"1:x6:h\xc3\xa9llo1:y5:world").hexdigest()
    assert Corpus(samples).hash == expected
    assert Corpus(samples[::-1]).hash != expected
    assert Corpus([Sample("x", "d", "hello"), samples[1]]).hash != expected
    # labels do not change the hash
    assert Corpus([Sample("x", "other", "héllo", "src"), samples[1]]).hash == expected


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(DataError, match="duplicate sample id 'x'"):
        Corpus([Sample("x", "d", "a"), Sample("x", "d", "b")])


def test_split_disjoint_covering_stratified_deterministic() -> None:
    c = make_corpus(20)
    first, rest = c.split(0.25, seed=3)
    ids_first, ids_rest = {s.id for s in first}, {s.id for s in rest}
    assert not ids_first & ids_rest
    assert ids_first | ids_rest == {s.id for s in c}
    assert all(first.domain_mix()[d]["samples"] == 5 for d in c.domains)
    again, _ = c.split(0.25, seed=3)
    assert [s.id for s in again] == [s.id for s in first]
    other, _ = c.split(0.25, seed=4)
    assert {s.id for s in other} != ids_first
    # order of the corpus is preserved inside each part
    positions = [c.samples.index(s) for s in first]
    assert positions == sorted(positions)


def test_split_membership_depends_on_ids_not_on_corpus_order() -> None:
    c = make_corpus(10)
    shuffled = Corpus(list(reversed(c.samples)), "rev")
    assert {s.id for s in c.split(0.5, 1)[0]} == {s.id for s in shuffled.split(0.5, 1)[0]}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="split fraction"):
        make_corpus(2).split(fraction)


def test_shards_disjoint_and_cover() -> None:
    c = make_corpus(7)
    shards = [c.shard(i, 4) for i in range(4)]
    ids = [s.id for sh in shards for s in sh]
    assert sorted(ids) == sorted(s.id for s in c)
    assert len(ids) == len(set(ids))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


@pytest.mark.parametrize(("index", "count"), [(4, 4), (-1, 2), (0, 0)])
def test_shard_rejects_bad_index(index: int, count: int) -> None:
    with pytest.raises(DataError, match="shard index"):
        make_corpus(2).shard(index, count)


def test_take_round_robin_over_domains() -> None:
    c = make_corpus(3)
    t = c.take(5)
    assert [s.id for s in t] == ["a-0", "b-0", "c-0", "a-1", "b-1"]
    assert len(c.take(100)) == len(c)
    assert len(c.take(0)) == 0


def test_take_skips_exhausted_domain() -> None:
    c = Corpus([Sample("a0", "a", "x"), Sample("b0", "b", "y"), Sample("b1", "b", "z")])
    assert [s.id for s in c.take(3)] == ["a0", "b0", "b1"]


def test_pickle_round_trip_for_worker_processes() -> None:
    c = make_corpus(4)
    copy = pickle.loads(pickle.dumps(c))
    assert copy.samples == c.samples and copy.hash == c.hash and copy.name == c.name
