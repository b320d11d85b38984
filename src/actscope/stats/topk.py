"""Streaming top-K of |a| with the coordinates of every event.

An event is one entry ``(row, channel)`` of a site's activations with value ``|a|`` and the
coordinates ``sample_id, position, token_id, channel, domain_id``. The kept events are the
first ``K`` under the total order: value descending, then ``sample_id``, ``position`` and
``channel`` ascending. Because the order is total and independent of how the stream is cut,
the top-K of a merged state equals the top-K of one pass over the whole stream, ties included
(a token repeated in many samples, e.g. BOS, produces exactly equal values).

Per batch (no host synchronisation, two small ``topk`` calls instead of one over R x D):

1. ``row_key = bits(max_d |a|) << 31 | (2^31 - 1 - rank(row))``: the first K rows by this
   key contain every event of the batch's top-K (each row ahead of a row ``r`` holds an entry
   ahead of every entry of ``r``, so fewer than K rows can be ahead of a row holding a top-K
   entry).
2. Among the ``K x D`` entries of those rows, ``key = bits(|a|) << 31 | (2^31 - 1 - (rank * D
   + channel))``, ``topk`` gives the batch's top-K in the total order (when ``R * D >= 2^31``
   the rank among the K candidate rows replaces the rank in the batch).

Non-negative float32 bit patterns order like the values, so the integer keys order like
``(value, -rank, -channel)``. Merging lists of K events uses a stable lexicographic sort;
:class:`TopK` queues batch lists and sorts them 16 at a time (same result, fewer operations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from actscope.stats.coords import Coords

__all__ = ["EVENT_FIELDS", "Events", "TopK"]

EVENT_FIELDS = ("value", "sample_id", "position", "token_id", "channel", "domain_id")
_LOW = (1 << 31) - 1
_RANK_LIMIT = 1 << 31


@dataclass
class Events:
    """K events sorted in the total order; empty slots have ``value = -1`` and sort last."""

    value: Tensor  # (K,) float32
    sample_id: Tensor  # (K,) int64, as are the fields below
    position: Tensor
    token_id: Tensor
    channel: Tensor
    domain_id: Tensor

    @classmethod
    def empty(cls, k: int, device: torch.device) -> Events:
        """K empty slots."""
        ints = [torch.full((k,), -1, dtype=torch.long, device=device) for _ in range(5)]
        return cls(torch.full((k,), -1.0, device=device), *ints)

    def fields(self) -> list[Tensor]:
        """The six tensors in :data:`EVENT_FIELDS` order."""
        return [getattr(self, f) for f in EVENT_FIELDS]

    def take(self, index: Tensor) -> Events:
        """Events at ``index`` (a long tensor)."""
        return Events(*(t[index] for t in self.fields()))

    @staticmethod
    def from_batch(
        a: Tensor | Callable[[Tensor], Tensor],
        row_max: Tensor,
        row_ok: Tensor,
        coords: Coords,
        k: int,
        entry_ok: Tensor | None,
        dim: int | None = None,
    ) -> Events:
        """Top-``k`` events of one batch.

        ``a``: (R, D) float32 |x|; ``row_max``: (R,) max of each row over its counted entries;
        ``row_ok``: rows that may hold events (valid, with a counted entry); ``entry_ok``:
        optional (R, D) mask of counted entries (``None``: all entries of ok rows count).
        ``a`` may also be a function returning |x| of the rows it is given (then pass ``dim``),
        so that only the candidate rows are ever materialised.
        """
        if isinstance(a, Tensor):
            rows, dim = a.shape
        else:
            rows, dim = row_max.shape[0], int(dim or 0)
        dev = row_max.device
        rank = coords.row_rank()
        row_key = (row_max.view(torch.int32).long() << 31) | (_LOW - rank)
        row_key = torch.where(row_ok, row_key, -1)
        cand_key, cand = torch.topk(row_key, min(k, rows))
        sub = a.index_select(0, cand) if isinstance(a, Tensor) else a(cand)
        order = rank.index_select(0, cand)  # (sample, position) order of the candidate rows
        if rows * dim >= _RANK_LIMIT:  # keep the tie-break below 2^31: rank among candidates
            order = torch.argsort(torch.argsort(order))
        tie = order[:, None] * dim + torch.arange(dim, device=dev)
        key = (sub.view(torch.int32).long() << 31) | (_LOW - tie)
        ok = (cand_key >= 0)[:, None]
        if entry_ok is not None:
            ok = ok & entry_ok.index_select(0, cand)
        key = torch.where(ok, key, -1).reshape(-1)
        top_key, flat = torch.topk(key, min(k, key.numel()))
        hit = top_key >= 0
        row = cand.index_select(0, flat // dim)
        ev = Events(
            torch.where(hit, sub.reshape(-1).index_select(0, flat), -1.0),
            coords.sample_id.index_select(0, row).long(),
            coords.position.index_select(0, row).long(),
            coords.token_id.index_select(0, row).long(),
            flat % dim,
            coords.domain_id.index_select(0, row).long(),
        )
        if ev.value.numel() < k:
            ev = ev.concat(Events.empty(k - ev.value.numel(), dev))
        return ev

    @staticmethod
    def cat(parts: list[Events]) -> Events:
        """All lists one after the other (unsorted)."""
        dev = parts[0].value.device
        cols = zip(*(p.fields() for p in parts), strict=True)
        return Events(*(torch.cat([t.to(dev) for t in col]) for col in cols))

    def concat(self, other: Events) -> Events:
        """Both lists one after the other (unsorted)."""
        return Events.cat([self, other])

    def best(self, k: int) -> Events:
        """First ``k`` events in the total order (stable lexicographic sort)."""
        order = torch.argsort(self.channel, stable=True)
        for key in (self.position, self.sample_id):
            order = order.index_select(0, torch.argsort(key.index_select(0, order), stable=True))
        val = self.value.index_select(0, order)
        order = order.index_select(0, torch.argsort(val, stable=True, descending=True))
        return self.take(order[:k])

    def merged(self, other: Events, k: int) -> Events:
        """First ``k`` events of both lists in the total order."""
        return self.concat(other).best(k)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Filled events as numpy arrays (host copy), keyed by :data:`EVENT_FIELDS`."""
        host = {f: t.cpu().numpy() for f, t in zip(EVENT_FIELDS, self.fields(), strict=True)}
        keep = host["value"] >= 0
        return {f: v[keep] for f, v in host.items()}


class TopK:
    """Kept top-K events plus not yet merged batch lists, merged ``flush_every`` at a time.

    Merging costs the same dozen small operations for 2 lists or 17, so batch lists wait in
    ``pending`` and are sorted together: the result is the same as merging each at once.
    """

    def __init__(self, k: int, device: torch.device, flush_every: int = 16) -> None:
        self.k = k
        self.kept = Events.empty(k, device)
        self.pending: list[Events] = []
        self.pending_host: list[tuple[np.ndarray, ...]] = []
        self.flush_every = flush_every

    def add(self, events: Events) -> None:
        """Queue one batch's (or another state's) top-K list."""
        self.pending.append(events)
        self._maybe_flush()

    def add_host(self, fields: tuple[np.ndarray, ...]) -> None:
        """Queue events given as host arrays in :data:`EVENT_FIELDS` order (CPU states only):
        no tensor is built until the queue is merged."""
        self.pending_host.append(fields)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.pending) + len(self.pending_host) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Merge the queued lists into ``kept``."""
        if self.pending_host:
            cols = zip(*self.pending_host, strict=True)
            self.pending.append(Events(*(torch.from_numpy(np.concatenate(c)) for c in cols)))
            self.pending_host = []
        if self.pending:
            self.kept = Events.cat([self.kept, *self.pending]).best(self.k)
            self.pending = []

    def merge(self, other: TopK) -> None:
        """Add the events of another state (a disjoint part of the stream)."""
        other.flush()
        self.add(other.kept)

    def events(self) -> Events:
        """The top-K events so far, sorted."""
        self.flush()
        return self.kept
