"""The adapter format: canonical site kinds -> a family's own module paths.

Each :class:`Adapter` is a small table. A :class:`Hook` names a module (relative to the
decoder layer for per-layer kinds, to the model root otherwise), whether the site is that
module's input (``"in"``: the ``hidden_states`` argument) or output (``"out"``: the tensor, or
the first element of a returned tuple), and optionally a slice of the last dimension for fused
projections (Phi-3's ``gate_up_proj``).

Family quirks are named mechanisms of the table, never ``if family == ...`` branches:

* **post-norm**: the site hooks the norm's output (``attn_out = Hook("post_attention_layernorm",
  "out")`` on OLMo2/Gemma 2);
* **residual added inside the module** (BLOOM): the site hooks the inner projection whose output
  is the branch (``Hook("self_attention.dense", "out")``);
* **parallel residual**: ``parallel_residual(cfg)``; resid_mid is then derived as
  resid_pre + attn_out;
* **scaled branch / scaled logits** (Granite ``residual_multiplier``, Cohere ``logit_scale``):
  :class:`Scale` on the hook or on ``logits_scale``. The family multiplies the module's tensor
  outside every module; the site's value is ``module tensor x factor`` (capture applies it, and
  maps an edit back by dividing), so ``attn_out`` is still what the branch adds and ``logits``
  still the model's logits; verification recomputes the logits from ``final_norm`` with it;
* **router output**: ``router_output`` is the element of the router's returned tuple that holds
  the logits (Llama 4's router returns ``(scores, logits)``);
* **not held by any tensor**: ``dropped`` maps a kind (or one site name) to the reason it is not
  offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Port = Literal["in", "out"]


@dataclass(frozen=True)
class Scale:
    """A scalar the family multiplies a tensor by outside any module.

    ``factor(cfg) = getattr(cfg, attr)`` (``1 / getattr(cfg, attr)`` with ``invert=True``), or
    ``value`` when the factor was measured (discovery) rather than read from the config.
    """

    attr: str | None = None
    invert: bool = False
    value: float | None = None

    def factor(self, cfg: Any) -> float:
        if self.value is not None:
            return self.value
        raw = getattr(cfg, str(self.attr), None)
        v = 1.0 if raw is None else float(raw)
        return 1.0 / v if self.invert else v

    def describe(self) -> str:
        if self.attr is None:
            return "a factor measured on the probe"
        return f"{'1 / ' if self.invert else ''}config.{self.attr}"


@dataclass(frozen=True)
class Hook:
    """Where a site lives: ``module`` path, ``port``, an optional last-dim ``part``, a ``scale``.

    ``part=(i, n)`` selects the i-th of n equal chunks of the last dimension. ``scale`` names a
    factor the family applies after the module (see :class:`Scale`).
    """

    module: str
    port: Port
    part: tuple[int, int] | None = None
    scale: Scale | None = None


@dataclass(frozen=True)
class Adapter:
    """Mapping of one family (one or more ``config.model_type`` values) onto the vocabulary."""

    families: tuple[str, ...]
    layers: str
    final_norm: str
    layer_sites: dict[str, Hook]
    linears: dict[str, str]
    router: str | None = None
    router_output: int = 0
    experts: str | None = None
    parallel_residual: Callable[[Any], bool] = field(default=lambda cfg: False)
    logits_scale: Scale | None = None
    dropped: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def std_sites(
    attn: str = "self_attn",
    mlp: str = "mlp",
    mid: str = "post_attention_layernorm",
    attn_out: Hook | None = None,
    mlp_out: Hook | None = None,
    gate: Hook | None = None,
    act: Hook | None = None,
    gated: bool = True,
) -> dict[str, Hook]:
    """The per-layer table of a pre-norm decoder layer, with the family's deviations."""
    sites = {
        "resid_pre": Hook("", "in"),
        "attn_in": Hook(attn, "in"),
        "attn_out": attn_out or Hook(attn, "out"),
        "resid_mid": Hook(mid, "in"),
        "mlp_in": Hook(mlp, "in"),
        "mlp_out": mlp_out or Hook(mlp, "out"),
        "resid_post": Hook("", "out"),
    }
    if gated:
        sites["mlp_gate"] = gate or Hook(f"{mlp}.gate_proj", "out")
        sites["mlp_act"] = act or Hook(f"{mlp}.down_proj", "in")
    return sites


LLAMA_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
ATTN_LINEARS = {k: v for k, v in LLAMA_LINEARS.items() if k in "qkvo"}


def linears(attn: str = "self_attn", mlp: str = "mlp", **roles: str) -> dict[str, str]:
    """Linear table from role -> name relative to ``attn`` (q k v o qkv) or ``mlp`` (the rest)."""
    return {
        role: f"{attn if role in ('q', 'k', 'v', 'o', 'qkv') else mlp}.{name}"
        for role, name in roles.items()
    }
