"""Row coordinates, the reducer protocol and input checks shared by every statistic.

A capture engine hands a reducer the activations of one site for one batch as a 2-D tensor
``x`` of shape ``(R, D)``: one row per token (batch and sequence flattened), one column per
channel. :class:`Coords` says where each row came from, ``valid`` marks the rows that are real
tokens (``False`` for padding). Reducers never import the engine: they take plain tensors.

Ordering used for ties everywhere in :mod:`actscope.stats`: events are ranked by value
(descending), then ``sample_id``, ``position`` and ``channel`` (ascending). The rank of a row
inside its batch under ``(sample_id, position)`` is computed once per batch by
:meth:`Coords.row_rank` and cached on the object, so an engine should build one ``Coords``
per batch and pass the same object to every site's reducer (the same holds for
:meth:`Coords.domain_slot`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from actscope.errors import ActscopeError

__all__ = ["Coords", "Reducer", "StatsError", "check_batch"]

R = TypeVar("R", bound="Reducer")


class StatsError(ActscopeError):
    """Bad input to a statistics reducer: wrong shapes, devices, options or mismatched merges."""


@dataclass
class Coords:
    """Where each row of a batch came from; all fields are ``(R,)`` int64 on ``x``'s device.

    ``sample_id`` is the corpus-wide index of the sequence, ``position`` the token's index in
    it, ``token_id`` the vocabulary id and ``domain_id`` a small integer naming the corpus
    domain (code, math, prose...).
    """

    sample_id: Tensor
    position: Tensor
    token_id: Tensor
    domain_id: Tensor
    _cache: dict[object, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_grid(
        cls,
        token_ids: Tensor,
        sample_ids: Tensor,
        domain_ids: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Coords:
        """Coordinates of the rows of a ``(B, T)`` batch flattened row-major to ``B * T`` rows.

        ``sample_ids`` and ``domain_ids`` are ``(B,)``; ``positions`` defaults to
        ``0..T-1`` in every sequence (pass it for left padding).
        """
        if token_ids.ndim != 2:
            raise StatsError(f"token_ids must be (B, T), got shape {tuple(token_ids.shape)}")
        b, t = token_ids.shape
        dev = token_ids.device
        if positions is None:
            positions = torch.arange(t, device=dev).expand(b, t)
        if domain_ids is None:
            domain_ids = torch.zeros(b, dtype=torch.long, device=dev)
        return cls(
            sample_id=sample_ids.to(dev, torch.long)[:, None].expand(b, t).reshape(-1),
            position=positions.to(dev, torch.long).reshape(-1),
            token_id=token_ids.to(torch.long).reshape(-1),
            domain_id=domain_ids.to(dev, torch.long)[:, None].expand(b, t).reshape(-1),
        )

    def row_rank(self) -> Tensor:
        """Rank ``0..R-1`` of every row under ascending ``(sample_id, position)``; cached.

        Two stable sorts (position, then sample id), no host synchronisation.
        """
        rank = self._cache.get("rank")
        if rank is None:
            order = torch.argsort(self.position, stable=True)
            order = order[torch.argsort(self.sample_id[order], stable=True)]
            rank = torch.empty_like(order)
            rank.scatter_(0, order, torch.arange(order.numel(), device=order.device))
            self._cache["rank"] = rank
        return rank

    def host(self) -> np.ndarray:
        """``(4, R)`` int64 numpy copy of sample_id, position, token_id, domain_id; cached."""
        arr = self._cache.get("host")
        if arr is None:
            arr = (
                torch.stack([self.sample_id, self.position, self.token_id, self.domain_id])
                .cpu()
                .numpy()
            )
            self._cache["host"] = arr
        return arr  # type: ignore[return-value]

    def domain_slot(self, n_domains: int) -> Tensor:
        """``domain_id`` where it lies in ``[0, n_domains)``, else ``n_domains``; cached."""
        slot = self._cache.get(("domain", n_domains))
        if slot is None:
            d = self.domain_id
            slot = torch.where((d >= 0) & (d < n_domains), d, n_domains)
            self._cache[("domain", n_domains)] = slot
        return slot


class Reducer(Protocol):
    """A streaming statistic: ``update`` per batch, ``merge`` partial states, ``result``.

    ``merge`` combines two states built from disjoint parts of one stream, in place, and
    returns ``self``; the state is picklable so it can travel between processes.
    """

    def update(self, x: Tensor, valid: Tensor, coords: Coords) -> None: ...

    def merge(self: R, other: R) -> R: ...

    def result(self) -> dict[str, Any]: ...


def check_batch(x: Tensor, valid: Tensor, coords: Coords, dim: int | None) -> None:
    """Raise :class:`StatsError` unless shapes, dtypes and devices of one batch agree.

    Only shapes and metadata are read: no tensor values, hence no device synchronisation.
    """
    if x.ndim != 2:
        raise StatsError(f"activations must be 2-D (rows, channels), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise StatsError(f"activations must be floating point, got {x.dtype}")
    rows, width = x.shape
    if dim is not None and width != dim:
        raise StatsError(f"activations have {width} channels, this reducer was built on {dim}")
    if valid.shape != (rows,) or valid.dtype != torch.bool:
        raise StatsError(
            f"valid must be a ({rows},) bool tensor, got {valid.dtype} {tuple(valid.shape)}"
        )
    for name in ("sample_id", "position", "token_id", "domain_id"):
        t = getattr(coords, name)
        if t.shape != (rows,):
            raise StatsError(f"coords.{name} must have shape ({rows},), got {tuple(t.shape)}")
        if t.device != x.device or valid.device != x.device:
            raise StatsError(f"coords.{name} and valid must be on {x.device}, like the activations")
