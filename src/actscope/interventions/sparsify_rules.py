"""Sparsification rules: which Linear inputs a rule zeroes, and the score it ranks entries by.

A *unit* is one mask: the entries of one Linear input that a rule keeps or drops together,
named by the site the mask is applied to (``q_in.3``). Every entry ``i`` gets a score and is
kept when ``score_i > t`` (a calibrated threshold) or when it is among the ``k`` largest scores
of its token (exact top-k). Scores, all computed in float32:

* ``abs`` (TEAL): ``s_i = |x_i|``;
* ``wina`` (WINA): ``s_i = |x_i| * ||W[:, i]||_2``, the column norm of the consuming weight;
* ``chess`` (CHESS, the down-projection input ``a = act(g) * u`` of a gated MLP):
  ``s_i = act(g_i)^2 * E[u_i^2]``, with ``g`` the gate pre-activation, ``u`` the up projection
  and ``E[u_i^2]`` its mean square over the calibration tokens. One threshold ``T`` per layer
  is the same as the channel thresholds ``|act(g_i)| > sqrt(T / E[u_i^2])``. The mask is decided
  before ``u`` is computed, so the up projection's rows of dropped channels are skipped too.

Which units each rule has (Llama-style names; fused projections follow the same logic):

* ``teal`` and ``wina``: every Linear input of every decoder layer (q, k, v, o, gate, up, down);
* ``chess``: the selective attention sparsification of CHESS (q and o inputs, ``abs`` score;
  k and v stay dense) and the channel-wise MLP unit on ``down_in`` (gate and up inputs dense).

Weight accounting: a unit at sparsity ``s`` skips ``s * n_weights`` weight reads per token,
``n_weights`` being the consuming Linear's ``in * out`` (CHESS MLP: up rows + down columns).
The weight sparsity of a layer block (attention or MLP) is the skipped weights over all Linear
weights of that block, dense projections included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actscope.capture.trace import sitemap_of
from actscope.errors import ActscopeError, suggest
from actscope.kernels.sparse_linear import linear_params
from actscope.sites.sitemap import SiteMap

RULES: tuple[str, ...] = ("teal", "wina", "chess")
SCORES: tuple[str, ...] = ("abs", "wina", "chess")
_RULE_SCORE = {"teal": "abs", "wina": "wina"}
_CHESS_ATTN = ("q", "o")


@dataclass(frozen=True)
class Unit:
    """One mask of a rule: the site it edits, its layer and block, score and weight count."""

    site: str
    layer: int
    block: str
    score: str
    n_weights: int


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`RULES`, else a one-line :class:`ActscopeError`."""
    if rule not in RULES:
        raise ActscopeError(
            f"unknown sparsity rule '{rule}'{suggest(rule, RULES)}; known: {', '.join(RULES)}"
        )
    return rule


def _block_of(sm: SiteMap, rel: str) -> str:
    attn = sm.adapter.layer_sites.get("attn_in")
    prefix = attn.module if attn is not None else "self_attn"
    return "attn" if rel == prefix or rel.startswith(prefix + ".") else "mlp"


def linear_sites(target: object) -> dict[str, tuple[str, int, str, nn.Module]]:
    """Every Linear input site of the decoder layers: ``site -> (linear, layer, block, module)``."""
    sm = sitemap_of(target)
    out: dict[str, tuple[str, int, str, nn.Module]] = {}
    for layer in range(sm.n_layers):
        for lin, rel in sm.adapter.linears.items():
            name = f"{lin}_in.{layer}"
            if name in sm:
                out[name] = (lin, layer, _block_of(sm, rel), sm.module(sm.get(name)))
    return out


def _numel(module: nn.Module) -> int:
    return int(linear_params(module)[0].numel())


def block_weights(target: object) -> dict[tuple[int, str], int]:
    """Total Linear weights of each ``(layer, block)``, dense projections included."""
    totals: dict[tuple[int, str], int] = {}
    for _lin, layer, block, module in linear_sites(target).values():
        totals[(layer, block)] = totals.get((layer, block), 0) + _numel(module)
    return totals


def rule_units(target: object, rule: str) -> list[Unit]:
    """The units of ``rule`` on this model, in layer order (see the module docstring)."""
    check_rule(rule)
    sites = linear_sites(target)
    if not sites:
        raise ActscopeError("this model exposes no Linear input sites to sparsify")
    if rule in _RULE_SCORE:
        return [
            Unit(name, layer, block, _RULE_SCORE[rule], _numel(mod))
            for name, (_lin, layer, block, mod) in sites.items()
        ]
    sm = sitemap_of(target)
    units: list[Unit] = []
    for layer in range(sm.n_layers):
        need = [f"gate_in.{layer}", f"up_in.{layer}", f"down_in.{layer}", f"mlp_gate.{layer}"]
        if any(n not in sm for n in need):
            raise ActscopeError(
                f"the CHESS rule needs a gated MLP with separate gate, up and down projections; "
                f"family '{sm.config.model_type}' has {', '.join(sm.adapter.linears)}"
            )
        for lin in _CHESS_ATTN:
            name = f"{lin}_in.{layer}"
            if name in sites:
                units.append(Unit(name, layer, "attn", "abs", _numel(sites[name][3])))
        up, down = sites[f"up_in.{layer}"][3], sites[f"down_in.{layer}"][3]
        units.append(Unit(f"down_in.{layer}", layer, "mlp", "chess", _numel(up) + _numel(down)))
    return units


def source_site(unit: Unit) -> str:
    """The site whose value the unit's score reads (the gate pre-activation for ``chess``)."""
    return f"mlp_gate.{unit.layer}" if unit.score == "chess" else unit.site


def column_norms(module: nn.Module) -> Tensor:
    """``||W[:, i]||_2`` for every input column ``i`` of a Linear layer, float32."""
    weight, _ = linear_params(module)
    return weight.float().norm(dim=0)


def mlp_activation(target: object, layer: int) -> Callable[[Tensor], Tensor]:
    """The activation function of layer ``layer``'s MLP (``act_fn`` of the MLP module)."""
    sm = sitemap_of(target)
    mlp = sm.module(sm.get(f"mlp_in.{layer}"))
    act = getattr(mlp, "act_fn", None)
    if act is None:
        raise ActscopeError(f"the MLP of layer {layer} ({type(mlp).__name__}) has no act_fn")
    return act  # type: ignore[no-any-return]


class Scorer:
    """Computes a unit's float32 score from the tensor named by :func:`source_site`."""

    def __init__(
        self, kind: str, scale: Tensor | None = None, act: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if kind not in SCORES:
            raise ActscopeError(f"unknown score '{kind}'; known: {', '.join(SCORES)}")
        if kind != "abs" and scale is None:
            raise ActscopeError(f"the '{kind}' score needs per-channel scales")
        if kind == "chess" and act is None:
            raise ActscopeError("the 'chess' score needs the MLP activation function")
        self.kind = kind
        self.scale = None if scale is None else scale.float()
        self.act = act

    def __call__(self, value: Tensor) -> Tensor:
        if self.kind == "abs":
            return value.float().abs()
        scale = self.scale.to(value.device)  # type: ignore[union-attr]
        if self.kind == "wina":
            return value.float().abs() * scale
        return self.act(value).float().square() * scale  # type: ignore[misc]


def make_scorer(target: object, unit: Unit, chess_up_sq: dict[int, Tensor] | None) -> Scorer:
    """The :class:`Scorer` of ``unit``; ``chess`` units need ``chess_up_sq[layer] = E[u^2]``."""
    if unit.score == "abs":
        return Scorer("abs")
    sm = sitemap_of(target)
    if unit.score == "wina":
        return Scorer("wina", column_norms(sm.module(sm.get(unit.site))))
    if chess_up_sq is None or unit.layer not in chess_up_sq:
        raise ActscopeError(
            f"the CHESS unit {unit.site} needs the calibrated E[up^2] of layer {unit.layer}; "
            "run `actscope sparsity calibrate --rules chess` first"
        )
    return Scorer("chess", chess_up_sq[unit.layer], mlp_activation(target, unit.layer))


def keep_threshold(score: Tensor, threshold: float) -> Tensor:
    """``score > threshold`` (entries at or below the threshold are dropped)."""
    return score > threshold


def keep_topk(score: Tensor, sparsity: float) -> Tensor:
    """Per row (last dimension), keep the ``d - round(sparsity * d)`` largest scores."""
    d = score.shape[-1]
    k = d - round(sparsity * d)
    keep = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        keep.scatter_(-1, score.topk(k, dim=-1).indices, True)
    return keep
