"""Sites that read the same tensor, and the Linear layers that consume it.

q/k/v read one tensor, gate/up another, ``resid_post.l`` is ``resid_pre.(l+1)``: quantizing
each of them separately would repeat the same work. :func:`site_groups` finds which sites
carry the same tensor with one probe forward pass (4 tokens, every site retained, so no memory
is reused while it runs), and lists the consumers of each group: the Linear behind every
``<lin>_in`` site, and the LM head for ``final_norm``.

:class:`OutputProbe` computes ``||E W_c^T||^2`` for every consumer ``c`` of a group, for an
error (or activation) matrix ``E``: directly (one GEMM over the concatenated weights, in the
model's dtype) or, when ``in_features`` is at most half of ``out_features``, through the Gram
matrix ``G = W^T W`` (float32): ``||E W^T||^2 = sum((E G) * E)``, which costs ``in^2`` instead
of ``in * out`` per row (the LM head, gate/up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from actscope.capture.runner import forward
from actscope.capture.trace import Trace, sitemap_of
from actscope.interventions.quant.weights import weight_matrix
from actscope.sites.sitemap import Site

RESIDUAL_KINDS = ("embed", "resid_pre", "resid_mid", "resid_post", "final_norm")
DEFAULT_SITES = ("linear_in", "embed", "resid_mid", "resid_post", "final_norm")
"""``linear_in`` stands for every ``<lin>_in`` kind of the family."""


@dataclass
class Consumer:
    """A Linear reading a group's tensor: the site naming it, its module, its ``(out, in)``."""

    site: str
    module: str
    weight: Tensor


@dataclass
class SiteGroup:
    """Sites carrying one tensor (execution order) and the Linear layers that read it."""

    sites: list[Site]
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def rep(self) -> Site:
        return self.sites[0]

    @property
    def name(self) -> str:
        return self.rep.name


def expand_patterns(lm: Any, patterns: list[str] | tuple[str, ...]) -> list[Site]:
    """Resolve site patterns, ``linear_in`` meaning every ``<lin>_in`` kind."""
    sm = sitemap_of(lm)
    pats: list[str] = []
    present = set(sm.kinds())
    for p in patterns:
        if p == "linear_in":
            pats += [k for k in (f"{lin}_in" for lin in sm.adapter.linears) if k in present]
        else:
            pats.append(p)
    sites = sm.resolve(pats)
    return [s for s in sites if s.editable and s.expert is None]


def site_groups(lm: Any, sites: list[Site]) -> list[SiteGroup]:
    """Group ``sites`` by the tensor they carry (one 4-token probe forward pass)."""
    sm = sitemap_of(lm)
    model = sm.model
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(4, device=device)[None, :] + 1
    with torch.inference_mode(), Trace(sm, [s.name for s in sites], retain=True) as tr:
        forward(model, ids)
    groups: dict[tuple[Any, ...], SiteGroup] = {}
    for s in sites:
        t = tr.retained[s.name]
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(key, SiteGroup([])).sites.append(s)
    linear_kinds = {f"{lin}_in" for lin in sm.adapter.linears}
    for g in groups.values():
        for s in g.sites:
            if s.kind in linear_kinds:
                g.consumers.append(Consumer(s.name, s.module, weight_matrix(sm.module(s))))
            elif s.kind == "final_norm":
                head = model.get_submodule(sm.lm_head)
                g.consumers.append(Consumer(s.name, sm.lm_head, weight_matrix(head)))
    return list(groups.values())


class OutputProbe:
    """Squared output norms ``||E W_c^T||_F^2`` of a group's consumers (see module doc)."""

    def __init__(self, consumers: list[Consumer]) -> None:
        self.n = len(consumers)
        direct = [i for i, c in enumerate(consumers) if not _use_gram(c.weight)]
        gram = [i for i, c in enumerate(consumers) if _use_gram(c.weight)]
        self.order = direct + gram
        self.w_cat = torch.cat([consumers[i].weight.detach() for i in direct]) if direct else None
        self.splits = [int(consumers[i].weight.shape[0]) for i in direct]
        self.grams = []
        for i in gram:
            self.grams.append(gram_matrix(consumers[i].weight))
        inv = [0] * self.n
        for pos, i in enumerate(self.order):
            inv[i] = pos
        self.inverse = inv

    def sq_norms(self, e: Tensor) -> Tensor:
        """``(n_consumers,)`` float32: ``||e W_c^T||^2`` for each consumer (``e``: (N, in))."""
        if self.n == 0:
            return torch.zeros(0, device=e.device)
        parts: list[Tensor] = []
        if self.w_cat is not None:
            y = e.to(self.w_cat.dtype) @ self.w_cat.t()
            col = y.float().square().sum(dim=0)
            parts += [p.sum() for p in torch.split(col, self.splits)]
        ef = e.float()
        for g in self.grams:
            parts.append(((ef @ g) * ef).sum())
        out = torch.stack(parts)
        return out[self.inverse] if self.order != list(range(self.n)) else out


def gram_matrix(w: Tensor, chunk: int = 16384) -> Tensor:
    """``W^T W`` in float32 for ``W`` of shape (out, in), accumulated over row chunks."""
    g = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float32, device=w.device)
    for start in range(0, w.shape[0], chunk):
        part = w[start : start + chunk].detach().float()
        g.addmm_(part.t(), part)
    return g


def _use_gram(w: Tensor) -> bool:
    out_f, in_f = w.shape
    return 2 * in_f <= out_f
