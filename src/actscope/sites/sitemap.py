"""Concrete sites of one model: names resolved to module paths, ports and layers."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from actscope.errors import LayerOutOfRangeError, UnknownSiteError, suggest
from actscope.sites.adapters import Adapter, adapter_for
from actscope.sites.adapters.base import Scale
from actscope.sites.discovery import discover
from actscope.sites.vocabulary import EXPERT_KINDS, LAYER_KINDS

Mode = Literal["in", "out", "derived", "router", "expert"]
_NAME = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<layer>-?\d+))?(?:\.(?P<expert>\d+))?$")
_LAYER_ORDER = list(LAYER_KINDS)


@dataclass(frozen=True)
class Site:
    """One named tensor of the forward pass.

    ``mode`` says how it is obtained: ``in``/``out`` of ``module`` (editable), ``router``
    (output number ``output`` of the MoE router, reshaped to (batch, seq, experts)), ``expert``
    (recomputed from the fused expert weights) or ``derived`` (resid_mid = resid_pre +
    attn_out on parallel-residual families). Only ``in``/``out`` sites can be edited.

    ``scale`` is a factor the family applies to the hooked tensor outside any module (Granite's
    ``residual_multiplier``, Cohere's ``logit_scale``): the site's value is
    ``module tensor x scale``, and an edit is made on that value and divided by ``scale``
    before it goes back into the forward pass. None means 1.
    """

    name: str
    kind: str
    layer: int | None
    expert: int | None
    module: str
    mode: Mode
    part: tuple[int, int] | None = None
    scale: float | None = None
    output: int = 0

    @property
    def editable(self) -> bool:
        return self.mode in ("in", "out")


class SiteMap:
    """All sites of a model, in execution order, with name resolution and patterns.

    After :func:`actscope.sites.verify.verify_sitemap` has run, ``dropped`` maps every site
    removed because it failed its identity (or its (batch, seq, ...) shape) to the reason, and
    ``inplace`` names the sites whose tensor the model writes into after the hook has seen it
    (None: not verified). ``verification`` holds the full result.
    """

    def __init__(self, model: nn.Module, adapter: Adapter | None = None) -> None:
        self.model = model
        self.config = model.config
        self.adapter = adapter or adapter_for(str(model.config.model_type)) or discover(model)
        modules = dict(model.named_modules())
        self.layers: nn.ModuleList = modules[self.adapter.layers]  # type: ignore[assignment]
        self.n_layers = len(self.layers)
        self.parallel = self.adapter.parallel_residual(self.config)
        head = model.get_output_embeddings()
        self.lm_head = next(n for n, m in modules.items() if m is head)
        self.softcap: float | None = getattr(self.config, "final_logit_softcapping", None)
        self.logits_scale = _factor(self.adapter.logits_scale, self.config)
        self.n_experts = int(
            getattr(self.config, "num_experts", 0) or getattr(self.config, "num_local_experts", 0)
        )
        self._sites: dict[str, Site] = {}
        self.dropped: dict[str, str] = {}
        self.inplace: frozenset[str] | None = None
        self.verification: Any = None
        self._build(modules)

    # construction ---------------------------------------------------------------------------
    def _add(self, site: Site) -> None:
        self._sites[site.name] = site

    def _build(self, modules: dict[str, nn.Module]) -> None:
        a = self.adapter
        self._add(Site("embed", "embed", None, None, f"{a.layers}.0", "in"))
        for i in range(self.n_layers):
            base = f"{a.layers}.{i}"
            present = {k: h for k, h in a.layer_sites.items() if _exists(modules, base, h.module)}
            for kind in _LAYER_ORDER:
                name = f"{kind}.{i}"
                if kind == "router_logits":
                    if a.router and f"{base}.{a.router}" in modules and not self._drop(name, kind):
                        path, out = f"{base}.{a.router}", a.router_output
                        self._add(Site(name, kind, i, None, path, "router", output=out))
                    continue
                if kind == "resid_mid" and self.parallel:
                    if f"attn_out.{i}" in self._sites and not self._drop(name, kind):
                        self._add(Site(name, kind, i, None, base, "derived"))
                    continue
                if kind not in present or self._drop(name, kind):
                    continue
                h = present[kind]
                path = f"{base}.{h.module}" if h.module else base
                scale = _factor(h.scale, self.config)
                self._add(Site(name, kind, i, None, path, h.port, h.part, scale))
            for lin, rel in a.linears.items():
                if f"{base}.{rel}" in modules:
                    for port in ("in", "out"):
                        name = f"{lin}_{port}.{i}"
                        if not self._drop(name, f"{lin}_{port}"):
                            self._add(Site(name, f"{lin}_{port}", i, None, f"{base}.{rel}", port))
            if a.experts and f"{base}.{a.experts}" in modules:
                # expert_out is a contribution to mlp_out: it carries mlp_out's scale.
                mlp_scale = _factor(
                    getattr(a.layer_sites.get("mlp_out"), "scale", None), self.config
                )
                for e in range(self.n_experts):
                    for kind in EXPERT_KINDS:
                        name = f"{kind}.{i}.{e}"
                        if not self._drop(name, kind):
                            scale = mlp_scale if kind == "expert_out" else None
                            path = f"{base}.{a.experts}"
                            self._add(Site(name, kind, i, e, path, "expert", None, scale))
        self._add(Site("final_norm", "final_norm", None, None, a.final_norm, "out"))
        if not self._drop("logits", "logits"):
            scale = self.logits_scale
            self._add(Site("logits", "logits", None, None, self.lm_head, "out", None, scale))
        for name, reason in a.dropped.items():  # named sites whose module the table lacks
            if _NAME.match(name) and "." in name and name not in self._sites:
                self.dropped.setdefault(name, reason)

    def _drop(self, name: str, kind: str) -> bool:
        """True (and the reason recorded) when the adapter declares the site not offered."""
        reason = self.adapter.dropped.get(name) or self.adapter.dropped.get(kind)
        if reason:
            self.dropped[name] = reason
        return bool(reason)

    def drop(self, reasons: dict[str, str]) -> None:
        """Remove the sites named in ``reasons`` (site -> why), and what is derived from them.

        A derived ``resid_mid`` (resid_pre + attn_out) goes with its layer's ``attn_out``.
        """
        for name, why in reasons.items():
            if self._sites.pop(name, None) is not None:
                self.dropped[name] = why
        for site in list(self._sites.values()):
            src = f"attn_out.{site.layer}"
            if site.mode == "derived" and src in self.dropped:
                del self._sites[site.name]
                self.dropped[site.name] = f"derived from {src}, which was dropped"

    # queries --------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every site name, in execution order."""
        return list(self._sites)

    def kinds(self) -> list[str]:
        """Distinct site kinds of this model, in execution order."""
        return list(dict.fromkeys(s.kind for s in self._sites.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._sites

    def __getitem__(self, name: str) -> Site:
        return self.get(name)

    def get(self, name: str) -> Site:
        """The site called ``name``; unknown names and bad layers raise with suggestions."""
        if name in self._sites:
            return self._sites[name]
        if name in self.dropped:
            raise UnknownSiteError(
                f"site '{name}' is not offered on this model: {self.dropped[name]}"
            )
        m = _NAME.match(name)
        if m and m.group("layer") is not None:
            kind, layer = m.group("kind"), int(m.group("layer"))
            if kind in self.kinds() and not 0 <= layer < self.n_layers:
                raise LayerOutOfRangeError(
                    f"layer {layer} is out of range for site '{name}': the model has "
                    f"{self.n_layers} layers (0..{self.n_layers - 1})"
                )
        raise UnknownSiteError(
            f"unknown site '{name}'{suggest(name, self.names + self.kinds())}; "
            "run `actscope sites MODEL` to list them"
        )

    def resolve(self, patterns: str | list[str] | tuple[str, ...]) -> list[Site]:
        """Sites matching ``patterns`` (in execution order, without repeats).

        A pattern is a site name (``resid_post.3``), a kind meaning every layer
        (``resid_post``), a glob (``*_in.*``, ``resid_*.1?``) or ``all``. Negative layer
        indices count from the end (``resid_post.-1``).
        """
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        chosen: dict[str, Site] = {}
        for pat in pats:
            for site in self._match(pat.strip()):
                chosen.setdefault(site.name, site)
        order = {n: i for i, n in enumerate(self._sites)}
        return sorted(chosen.values(), key=lambda s: order[s.name])

    def _match(self, pat: str) -> list[Site]:
        if pat in ("all", "*"):
            return list(self._sites.values())
        m = _NAME.match(pat)
        if m and m.group("layer") is not None and int(m.group("layer")) < 0:
            layer = int(m.group("layer")) + self.n_layers
            if layer < 0:
                raise LayerOutOfRangeError(
                    f"layer {m.group('layer')} is out of range ({self.n_layers} layers)"
                )
            rest = f".{m.group('expert')}" if m.group("expert") else ""
            pat = f"{m.group('kind')}.{layer}{rest}"
        if pat in self._sites:
            return [self._sites[pat]]
        if pat in self.kinds():
            return [s for s in self._sites.values() if s.kind == pat]
        lost = [n for n in self.dropped if _NAME.match(n) and n.split(".")[0] == pat]
        if lost:
            raise UnknownSiteError(
                f"site kind '{pat}' is not offered on this model: {self.dropped[lost[0]]}"
            )
        if any(c in pat for c in "*?["):
            hits = [s for n, s in self._sites.items() if fnmatch.fnmatchcase(n, pat)]
            if hits:
                return hits
            raise UnknownSiteError(f"pattern '{pat}' matches no site; run `actscope sites MODEL`")
        return [self.get(pat)]

    def finish_logits(self, z: Tensor) -> Tensor:
        """The model's logits from the LM head's output ``z``: ``z x logits_scale``, then the
        soft-cap ``softcap * tanh(. / softcap)`` (each where the family has one)."""
        if self.logits_scale is not None:
            z = z * self.logits_scale
        return torch.tanh(z / self.softcap) * self.softcap if self.softcap else z

    def module(self, site: Site) -> nn.Module:
        return self.model.get_submodule(site.module)

    def describe(self) -> dict[str, Any]:
        """Summary for manifests: family, adapter, layer count, site count."""
        return {
            "family": str(self.config.model_type),
            "adapter": list(self.adapter.families),
            "n_layers": self.n_layers,
            "n_sites": len(self._sites),
            "verified": self.inplace is not None,
            "dropped_sites": dict(self.dropped),
            "parallel_residual": self.parallel,
            "logit_softcap": self.softcap,
        }


def _factor(scale: Scale | None, cfg: Any) -> float | None:
    """The factor of ``scale`` on this config; None when there is none or it is 1."""
    f = None if scale is None else scale.factor(cfg)
    return None if f is None or f == 1.0 else f


def _exists(modules: dict[str, nn.Module], base: str, rel: str) -> bool:
    return (f"{base}.{rel}" if rel else base) in modules


def layer_kinds() -> list[str]:
    """Per-layer kinds of the vocabulary (for docs and CLI help)."""
    return list(LAYER_KINDS)
