"""The profile's consumer: routes every site's activations to its streaming statistics.

One :class:`~actscope.stats.SiteStats` per *distinct* tensor. Many sites are the same tensor
(``q_in``, ``k_in`` and ``v_in`` are ``attn_in`` on Llama; ``resid_post.l`` is
``resid_pre.(l+1)``; ``down_in`` is ``mlp_act``...). :func:`find_aliases` detects them once,
by object identity on a short forward pass, and the collector computes each distinct tensor's
statistics once; the tables copy them to every alias. Padding rows are excluded by passing the
batch's mask as ``valid``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from actscope.capture.runner import forward
from actscope.capture.trace import Trace, sitemap_of
from actscope.sites.sitemap import Site
from actscope.stats import Coords, SiteStats, StatsOptions

RESIDUAL_KINDS = (
    "embed",
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "final_norm",
)


def options_for(site: Site, base: StatsOptions) -> StatsOptions:
    """Statistics computed at ``site``: per-channel groups only where they are used.

    Per-channel max|x|, mean|x|, mean x^2 (SmoothQuant / AWQ / imatrix) at Linear inputs and on
    the residual stream; per-channel kurtosis on the residual stream; Sun's massive-activation
    criterion on the residual stream and the block outputs; everything else everywhere.
    """
    linear_in = site.kind.endswith("_in") and site.kind not in ("attn_in", "mlp_in", "expert_in")
    residual = site.kind in RESIDUAL_KINDS
    return replace(
        base,
        channels=base.channels and (linear_in or residual or site.kind in ("attn_in", "mlp_in")),
        channel_kurtosis=base.channel_kurtosis and residual,
        massive=base.massive and residual,
    )


def find_aliases(lm: Any, sites: list[Site]) -> dict[str, str]:
    """Map every site to the first site (in execution order) that is the same tensor object.

    Found on a 1 x 8 forward pass: two hooks that see the same view of the same memory
    (address, shape, strides, dtype, device) see the same activation (the model passes one
    object to both modules). One dictionary lookup per site.
    """
    sm = sitemap_of(lm)
    seen: dict[tuple[Any, ...], str] = {}
    keep: list[Tensor] = []  # holds every probed tensor so that no address is reused
    alias: dict[str, str] = {}

    experts = {s.name for s in sites if s.mode == "expert"}

    def probe(name: str, value: Tensor, mask: Tensor | None) -> None:
        if name in experts:  # same tensor as mlp_in, but a different (routed) mask
            alias[name] = name
            return
        keep.append(value)
        key = (value.data_ptr(), tuple(value.shape), value.stride(), value.dtype, value.device)
        alias[name] = seen.setdefault(key, name)

    ids = torch.arange(8, device=lm.device).unsqueeze(0) + 3
    with torch.inference_mode(), Trace(sm, [s.name for s in sites], consumers=[probe]):
        forward(lm.model, ids)
    return alias


@dataclass
class ProfileCollector:
    """Consumer for :func:`actscope.capture.run`: SiteStats per distinct tensor."""

    sites: list[Site]
    aliases: dict[str, str]
    options: StatsOptions
    stats: dict[str, SiteStats] = field(default_factory=dict)
    seq_len: int = 0
    _coords: Coords | None = None
    _valid: Tensor | None = None

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.sites}
        groups: dict[str, list[Site]] = {}
        for name, first in self.aliases.items():
            if name in by_name:
                groups.setdefault(first, []).append(by_name[name])
        for first, members in groups.items():
            opts = [options_for(m, self.options) for m in members]
            merged = replace(
                opts[0],
                channels=any(o.channels for o in opts),
                channel_kurtosis=any(o.channel_kurtosis for o in opts),
                massive=any(o.massive for o in opts),
            )
            self.stats[first] = SiteStats(merged)

    def begin_batch(self, batch: Any) -> None:
        mask = batch.attention_mask.bool()
        pos = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        doc_pos = pos + batch.chunk_ids[:, None] * self.seq_len
        self._coords = Coords.from_grid(
            batch.input_ids, batch.sample_ids, batch.domain_ids, positions=doc_pos
        )
        self._valid = mask.reshape(-1)

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        st = self.stats.get(site)
        if st is None:  # an alias: its statistics are those of the first occurrence
            return
        assert self._coords is not None and self._valid is not None
        x = value.reshape(-1, value.shape[-1])
        valid = self._valid if mask is None else mask.reshape(-1)
        if x.shape[0] != valid.shape[0]:
            return
        st.update(x, valid, self._coords)

    def end_batch(self, batch: Any) -> None:
        self._coords = None
        self._valid = None

    def merge(self, other: ProfileCollector) -> ProfileCollector:
        """Combine with a collector run on a disjoint part of the corpus."""
        for name, st in other.stats.items():
            self.stats[name].merge(st)
        return self
