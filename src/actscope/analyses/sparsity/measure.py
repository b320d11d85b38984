"""How sparse a model already is: zeros and small entries of every Linear input, and CETT.

Per domain of the corpus (and ``all`` domains pooled), per layer and per Linear-input site
(``q_in.3``...), over the real (non-padding) tokens:

* ``frac_zero`` = #{x == 0} / #entries;
* ``frac_below_<eps>`` = #{|x| < eps} / #entries, for every ``eps`` asked for;

and per layer the CETT-based activation ratio of the MLP (see :mod:`.cett`): the threshold
found by bisection for the target CETT on a seeded random sample of at most ``cett_tokens``
tokens per domain (the ``all`` row pools the domain samples), and ``1 -`` the fraction of
inactive neurons at that threshold.

Counts are accumulated on the model's device per domain with ``index_add_`` (no host
synchronisation); the CETT sample is gathered with boolean indexing (one synchronisation per
layer and batch, a one-off cost of this command).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.sparsity.cett import cett_threshold
from actscope.analyses.sparsity.data import Batches
from actscope.capture.runner import run
from actscope.capture.trace import sitemap_of
from actscope.errors import ActscopeError
from actscope.interventions.sparsify_rules import linear_sites
from actscope.kernels.sparse_linear import linear_params

ALL = "all"


def eps_column(eps: float) -> str:
    """Column name of the below-epsilon fraction for ``eps`` (``frac_below_0.001``)."""
    return f"frac_below_{eps:g}"


@dataclass
class MeasureResult:
    """Tables of :func:`measure_sparsity` and what produced them."""

    zeros: pd.DataFrame
    cett: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


class _Counter:
    """Per site and domain: exact zeros, entries below each eps, and entries counted."""

    def __init__(self, n_domains: int, eps: Sequence[float]) -> None:
        self.n_domains = n_domains
        self.eps = list(eps)
        self.dom: Tensor | None = None
        self.counts: dict[str, Tensor] = {}

    def begin_batch(self, batch: Any) -> None:
        self.dom = batch.domain_ids

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        b, t, d = value.shape
        real = torch.ones(b, t, dtype=torch.bool, device=value.device) if mask is None else mask
        real3 = real.unsqueeze(-1)
        a = value.abs()
        rows = [real.sum(dim=1) * d, ((a == 0) & real3).sum(dim=(1, 2))]
        rows += [((a < e) & real3).sum(dim=(1, 2)) for e in self.eps]
        per_row = torch.stack(rows, dim=1)  # (B, 2 + n_eps)
        acc = self.counts.get(site)
        if acc is None:
            acc = self.counts[site] = torch.zeros(
                self.n_domains, per_row.shape[1], dtype=torch.long, device=value.device
            )
        acc.index_add_(0, self.dom.to(value.device), per_row)  # type: ignore[union-attr]


class _CettSampler:
    """A seeded Bernoulli sample of down-projection inputs per layer and domain."""

    def __init__(self, probs: list[float], cap: int, seed: int) -> None:
        self.probs = torch.tensor(probs, dtype=torch.float32)
        self.cap = cap
        self.gen = torch.Generator().manual_seed(seed)
        self.dom: Tensor | None = None
        self.pick: Tensor | None = None
        self.rows: dict[tuple[int, int], list[Tensor]] = {}
        self.taken: dict[tuple[int, int], int] = {}

    def begin_batch(self, batch: Any) -> None:
        b, t = batch.input_ids.shape
        self.dom = batch.domain_ids.cpu()
        u = torch.rand(b, t, generator=self.gen)
        self.pick = (u < self.probs[self.dom].unsqueeze(1)) & batch.attention_mask.cpu().bool()

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        layer = int(site.rsplit(".", 1)[1])
        pick = self.pick.to(value.device)  # type: ignore[union-attr]
        for d in self.dom.unique().tolist():  # type: ignore[union-attr]
            key = (layer, d)
            room = self.cap - self.taken.get(key, 0)
            if room <= 0:
                continue
            rows_d = (self.dom == d).to(value.device).unsqueeze(1) & pick
            sample = value[rows_d].float()[:room]
            self.rows.setdefault(key, []).append(sample)
            self.taken[key] = self.taken.get(key, 0) + int(sample.shape[0])


def measure_sparsity(
    lm: Any,
    data: Batches,
    *,
    eps: Sequence[float] = (1e-3, 1e-2),
    cett_target: float = 0.2,
    cett_tokens: int = 512,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> MeasureResult:
    """Zero / below-eps fractions of every Linear input and the MLP CETT ratio, per domain."""
    if not 0.0 < cett_target < 1.0:
        raise ActscopeError(f"the CETT target must lie in (0, 1), got {cett_target}")
    sm = sitemap_of(lm)
    sites = linear_sites(lm)
    if not sites:
        raise ActscopeError("this model exposes no Linear input sites")
    domains = data.domains
    counter = _Counter(len(domains), eps)
    per_domain = data.tokens_per_domain()
    probs = [min(1.0, 1.5 * cett_tokens / max(per_domain[d], 1)) for d in domains]
    sampler = _CettSampler(probs, cett_tokens, seed)
    down = [s for s, v in sites.items() if v[0] == "down"]

    def consume(site: str, value: Tensor, mask: Tensor | None) -> None:
        counter(site, value, mask)
        if site in down_set:
            sampler(site, value, mask)

    down_set = set(down)
    consume.begin_batch = lambda b: (counter.begin_batch(b), sampler.begin_batch(b))  # type: ignore[attr-defined]
    info = run(lm, data.batches, list(sites), [consume], progress=progress)
    zeros = _zeros_table(counter, sites, domains, eps)
    cett = _cett_table(sm, sampler, down, domains, cett_target)
    return MeasureResult(
        zeros,
        cett,
        {
            "tokens": info.tokens,
            "seconds": info.seconds,
            "eps": list(eps),
            "cett_target": cett_target,
            "cett_tokens": cett_tokens,
            "seed": seed,
        },
    )


def _zeros_table(
    counter: _Counter, sites: dict[str, Any], domains: tuple[str, ...], eps: Sequence[float]
) -> pd.DataFrame:
    rows = []
    for site, acc in counter.counts.items():
        lin, layer, block, _ = sites[site]
        table = acc.cpu()
        for name, vals in [*zip(domains, table, strict=True), (ALL, table.sum(dim=0))]:
            n = int(vals[0])
            if n == 0:
                continue
            row = {
                "domain": name,
                "layer": layer,
                "site": site,
                "linear": lin,
                "block": block,
                "entries": n,
                "frac_zero": int(vals[1]) / n,
            }
            for j, e in enumerate(eps):
                row[eps_column(e)] = int(vals[2 + j]) / n
            rows.append(row)
    return pd.DataFrame(rows)


def _cett_table(
    sm: Any, sampler: _CettSampler, down: list[str], domains: tuple[str, ...], target: float
) -> pd.DataFrame:
    rows = []
    for site in down:
        layer = int(site.rsplit(".", 1)[1])
        weight, _ = linear_params(sm.module(sm.get(site)))
        pooled: list[Tensor] = []
        for d, name in enumerate(domains):
            parts = sampler.rows.get((layer, d), [])
            if not parts:
                continue
            a = torch.cat(parts)
            pooled.append(a)
            rows.append(_cett_row(name, layer, a, weight, target))
        if pooled:
            rows.append(_cett_row(ALL, layer, torch.cat(pooled), weight, target))
    return pd.DataFrame(rows)


def _cett_row(domain: str, layer: int, a: Tensor, weight: Tensor, target: float) -> dict[str, Any]:
    r = cett_threshold(a, weight.to(a.device), target)
    return {
        "domain": domain,
        "layer": layer,
        "cett_target": target,
        "threshold": r.threshold,
        "cett": r.cett,
        "activation_ratio": r.activation_ratio,
        "n_tokens": r.n_tokens,
    }
