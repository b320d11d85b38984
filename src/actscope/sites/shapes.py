"""Shapes of sites, measured by one short forward pass."""

from __future__ import annotations

from typing import Any

import torch

from actscope.capture.runner import forward
from actscope.capture.trace import Trace, sitemap_of
from actscope.sites.vocabulary import describe_kind
from actscope.utils.devices import input_device


def site_shapes(
    lm: Any, patterns: list[str] | None = None, n_tokens: int = 4
) -> list[dict[str, Any]]:
    """One row per site: name, module path, mode, shape (batch 1 x ``n_tokens``), meaning.

    ``mode`` is the Site's, with ``[i/n]`` for a slice of a fused output and `` xF`` for a site
    the family scales by F outside the module (the value shown is the scaled one).

    ``lm`` is a LoadedModel, a SiteMap or a bare HF causal LM.
    """
    sm = sitemap_of(lm)
    ids = torch.arange(min(n_tokens, 8), device=input_device(sm.model)).unsqueeze(0) + 10
    with torch.inference_mode(), Trace(sm, patterns or ["all"], retain=True) as tr:
        forward(sm.model, ids)
    return [
        {
            "site": s.name,
            "module": s.module,
            "mode": s.mode
            + (f"[{s.part[0]}/{s.part[1]}]" if s.part else "")
            + (f" x{s.scale:g}" if s.scale is not None else ""),
            "shape": "x".join(str(d) for d in tr.retained[s.name].shape),
            "meaning": describe_kind(s.kind),
            "n_layers": sm.n_layers,
        }
        for s in tr.sites
    ]
