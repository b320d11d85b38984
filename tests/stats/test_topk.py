"""Tests of actscope.stats.topk: per-batch top-K and merging vs a brute-force sort, ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actscope.stats import topk
from actscope.stats.coords import Coords
from actscope.stats.topk import EVENT_FIELDS, Events, TopK


def _batch(rows: int, dim: int, seed: int, sample_base: int = 0) -> tuple[torch.Tensor, Coords]:
    """Small integer values (many exact ties), rows in shuffled (sample, position) order."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (rows, dim), generator=g).float()
    perm = torch.randperm(rows, generator=g)
    sample = sample_base + perm // 4
    position = perm % 4
    c = Coords(sample, position, torch.randint(0, 100, (rows,), generator=g), sample % 3)
    return a, c


def _brute(batches: list[tuple[torch.Tensor, Coords, torch.Tensor]], k: int) -> list[tuple]:
    """All counted entries sorted by (value desc, sample, position, channel)."""
    entries = []
    for a, c, ok in batches:
        for r in range(a.shape[0]):
            for d in range(a.shape[1]):
                if ok[r, d]:
                    entries.append(
                        (
                            -float(a[r, d]),
                            int(c.sample_id[r]),
                            int(c.position[r]),
                            d,
                            int(c.token_id[r]),
                            int(c.domain_id[r]),
                        )
                    )
    entries.sort()
    return [(-e[0], e[1], e[2], e[4], e[3], e[5]) for e in entries[:k]]


def _as_tuples(ev: Events) -> list[tuple]:
    host = ev.to_numpy()
    return [tuple(host[f][i].item() for f in EVENT_FIELDS) for i in range(len(host["value"]))]


def _from_batch(a: torch.Tensor, c: Coords, ok: torch.Tensor, k: int) -> Events:
    row_ok = ok.any(1)
    row_max = torch.where(ok, a, -1.0).amax(1)
    return Events.from_batch(a, row_max, row_ok, c, k, ok)


@pytest.mark.parametrize("local_rank", [False, True])
def test_batch_topk_matches_brute_force_with_ties(
    local_rank: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if local_rank:  # the tie-break used when rows x channels >= 2^31
        monkeypatch.setattr(topk, "_RANK_LIMIT", 1)
    a, c = _batch(24, 5, 0)
    ok = torch.ones_like(a, dtype=torch.bool)
    ok[3] = False  # a padding row
    ok[5, 2] = False  # a non-finite entry
    for k in (1, 7, 32):
        assert _as_tuples(_from_batch(a, c, ok, k)) == _brute([(a, c, ok)], k)


def test_more_slots_than_entries_are_left_empty() -> None:
    a, c = _batch(3, 2, 1)
    ok = torch.ones_like(a, dtype=torch.bool)
    ev = _from_batch(a, c, ok, 10)
    assert ev.value.shape == (10,)
    assert (ev.value[6:] == -1).all()
    assert _as_tuples(ev) == _brute([(a, c, ok)], 10)


def test_merge_of_batches_matches_one_sort_in_any_order() -> None:
    batches = []
    for i in range(5):
        a, c = _batch(16, 4, 10 + i, sample_base=4 * i)
        ok = torch.rand(a.shape, generator=torch.Generator().manual_seed(i)) > 0.1
        batches.append((a, c, ok))
    k = 12
    expected = _brute(batches, k)
    lists = [_from_batch(a, c, ok, k) for a, c, ok in batches]
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        acc = Events.empty(k, torch.device("cpu"))
        for i in order:
            acc = acc.merged(lists[i], k)
        assert _as_tuples(acc) == expected
    left = lists[0].merged(lists[1], k).merged(lists[2], k)
    right = lists[3].merged(lists[4], k)
    assert _as_tuples(right.merged(left, k)) == expected


def test_max_event_coordinates() -> None:
    a = torch.zeros(6, 8)
    a[4, 6] = 9.0
    c = Coords(torch.tensor([7] * 6), torch.arange(6), torch.arange(100, 106), torch.full((6,), 2))
    ev = _from_batch(a, c, torch.ones_like(a, dtype=torch.bool), 3).to_numpy()
    assert ev["value"][0] == 9.0
    assert (ev["sample_id"][0], ev["position"][0], ev["token_id"][0]) == (7, 4, 104)
    assert (ev["channel"][0], ev["domain_id"][0]) == (6, 2)
    assert np.all(ev["value"][1:] == 0.0)


def test_topk_queue_gives_the_same_events_whatever_the_flush_size() -> None:
    batches = []
    for i in range(7):
        a, c = _batch(8, 3, 20 + i, sample_base=2 * i)
        batches.append((a, c, torch.ones_like(a, dtype=torch.bool)))
    k = 5
    expected = _brute(batches, k)
    for every in (1, 2, 16):
        acc = TopK(k, torch.device("cpu"), flush_every=every)
        other = TopK(k, torch.device("cpu"), flush_every=every)
        for i, (a, c, ok) in enumerate(batches):
            (acc if i % 2 else other).add(_from_batch(a, c, ok, k))
        acc.merge(other)
        assert _as_tuples(acc.events()) == expected
        assert acc.pending == []
