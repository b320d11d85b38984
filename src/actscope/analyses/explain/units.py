"""Patch units: which slice of which site one patched run replaces.

A unit is a site (``resid_pre.3``, ``o_in.5``...), a position (or every position) and a slice
of the last dimension: the whole vector, or one attention head. Heads are patched at the input
of the attention output projection (``o_in.L``), where head h occupies the contiguous dims
``[h * head_dim, (h + 1) * head_dim)`` on every family.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from actscope.errors import ActscopeError, UnknownSiteError
from actscope.sites.sitemap import Site, SiteMap

HEAD_KIND = "o_in"


@dataclass(frozen=True)
class PatchUnit:
    """One patch: ``site`` at ``position`` (None = all) restricted to ``head`` (None = all dims)."""

    site: str
    kind: str
    layer: int
    position: int | None = None
    head: int | None = None
    head_dim: int | None = None

    def mask(self, length: int, width: int, device: torch.device | None = None) -> Tensor:
        """Boolean (length, width) mask of the patched entries."""
        m = torch.zeros(length, width, dtype=torch.bool, device=device)
        rows = slice(None) if self.position is None else slice(self.position, self.position + 1)
        if self.head is None:
            m[rows] = True
        else:
            hd = int(self.head_dim or 0)
            m[rows, self.head * hd : (self.head + 1) * hd] = True
        return m

    def reduce(self, x: Tensor) -> Tensor:
        """Sum of a (length, width) tensor over this unit's entries."""
        if self.position is not None:
            x = x[self.position]
        if self.head is not None:
            hd = int(self.head_dim or 0)
            x = x[..., self.head * hd : (self.head + 1) * hd]
        return x.sum()


def patchable_sites(sm: SiteMap, patterns: Sequence[str]) -> list[Site]:
    """Per-token editable sites matching ``patterns`` (logits excluded: nothing follows them)."""
    sites = sm.resolve(list(patterns))
    bad = [s.name for s in sites if not s.editable or s.kind == "logits"]
    if bad:
        raise ActscopeError(
            f"cannot patch {', '.join(bad[:5])}: only editable per-token sites can be patched"
        )
    if not sites:
        raise UnknownSiteError(f"no site matches {', '.join(patterns)}")
    return sites


def _layer(site: Site) -> int:
    return -1 if site.layer is None else int(site.layer)


def position_units(sites: Iterable[Site], length: int) -> list[PatchUnit]:
    """Every (site, position) of prompts of ``length`` tokens, the whole vector each."""
    return [PatchUnit(s.name, s.kind, _layer(s), p) for s in sites for p in range(length)]


def n_heads_of(sm: SiteMap) -> int:
    """Number of attention (query) heads from the model config."""
    cfg = sm.config
    n = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not n:
        raise ActscopeError("the model config names no attention head count")
    return int(n)


def head_units(
    sm: SiteMap, width: int, length: int | None = None, layers: Iterable[int] | None = None
) -> list[PatchUnit]:
    """Every (layer, head) at ``o_in.L`` over all positions, or per position when ``length``.

    ``width`` is the size of ``o_in`` (heads x head_dim); it must divide by the head count.
    """
    if f"{HEAD_KIND}.0" not in sm:
        raise ActscopeError(
            "per-head patching needs the attention output projection input (o_in), "
            "which this family does not expose"
        )
    n = n_heads_of(sm)
    if width % n:
        raise ActscopeError(f"o_in width {width} is not a multiple of the {n} heads")
    hd = width // n
    chosen = range(sm.n_layers) if layers is None else layers
    positions: list[int | None] = [None] if length is None else list(range(length))
    return [
        PatchUnit(f"{HEAD_KIND}.{layer}", HEAD_KIND, layer, p, h, hd)
        for layer in chosen
        for h in range(n)
        for p in positions
    ]
