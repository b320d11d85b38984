"""Declarative family adapters: canonical site kinds -> the family's own module paths.

Each :class:`Adapter` is a small table. A :class:`Hook` names a module (relative to the
decoder layer for per-layer kinds, to the model root otherwise), whether the site is that
module's input (``"in"``: the ``hidden_states`` argument) or output (``"out"``: the tensor, or
the first element of a returned tuple), and optionally a slice of the last dimension for fused
projections (Phi-3's ``gate_up_proj``). Outside code can add families with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Port = Literal["in", "out"]


@dataclass(frozen=True)
class Hook:
    """Where a site lives: ``module`` path, ``port``, and an optional last-dim ``part``.

    ``part=(i, n)`` selects the i-th of n equal chunks of the last dimension.
    """

    module: str
    port: Port
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Adapter:
    """Mapping of one family (one or more ``config.model_type`` values) onto the vocabulary."""

    families: tuple[str, ...]
    layers: str
    final_norm: str
    layer_sites: dict[str, Hook]
    linears: dict[str, str]
    router: str | None = None
    experts: str | None = None
    parallel_residual: Callable[[Any], bool] = field(default=lambda cfg: False)
    notes: str = ""


def _std(
    attn: str = "self_attn",
    mlp: str = "mlp",
    mid: str = "post_attention_layernorm",
    attn_out: Hook | None = None,
    mlp_out: Hook | None = None,
    gate: Hook | None = None,
    act: Hook | None = None,
    gated: bool = True,
) -> dict[str, Hook]:
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


_LLAMA_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_ATTN_LINEARS = {k: v for k, v in _LLAMA_LINEARS.items() if k in "qkvo"}

ADAPTERS: list[Adapter] = [
    Adapter(
        families=("llama", "mistral", "qwen2", "qwen3"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_std(),
        linears=_LLAMA_LINEARS,
    ),
    Adapter(
        # Gemma 2/3 norm attention and MLP outputs before adding them (sandwich norms).
        families=("gemma2", "gemma3_text", "gemma3"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_std(
            mid="pre_feedforward_layernorm",
            attn_out=Hook("post_attention_layernorm", "out"),
            mlp_out=Hook("post_feedforward_layernorm", "out"),
        ),
        linears=_LLAMA_LINEARS,
        notes="embed includes the sqrt(hidden_size) scale applied by the scaled embedding",
    ),
    Adapter(
        # OLMo2 has no pre-norms: attention and MLP read the raw residual, their outputs are normed.
        families=("olmo2",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_std(
            mid="mlp",
            attn_out=Hook("post_attention_layernorm", "out"),
            mlp_out=Hook("post_feedforward_layernorm", "out"),
        ),
        linears=_LLAMA_LINEARS,
    ),
    Adapter(
        families=("phi3",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_std(gate=Hook("mlp.gate_up_proj", "out", part=(0, 2))),
        linears={
            "qkv": "self_attn.qkv_proj",
            "o": "self_attn.o_proj",
            "gate_up": "mlp.gate_up_proj",
            "down": "mlp.down_proj",
        },
    ),
    Adapter(
        families=("qwen2_moe", "qwen3_moe", "mixtral"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_std(gated=False),
        linears={
            **_ATTN_LINEARS,
            "shared_gate": "mlp.shared_expert.gate_proj",
            "shared_up": "mlp.shared_expert.up_proj",
            "shared_down": "mlp.shared_expert.down_proj",
        },
        router="mlp.gate",
        experts="mlp.experts",
        notes="per-expert sites recompute the expert MLP from the fused expert weights",
    ),
    Adapter(
        families=("gpt2",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=_std(
            attn="attn",
            mid="ln_2",
            gated=True,
            gate=Hook("mlp.c_fc", "out"),
            act=Hook("mlp.c_proj", "in"),
        ),
        linears={"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
        notes="GPT-2 projections are Conv1D modules (weight stored transposed)",
    ),
    Adapter(
        families=("gpt_neox",),
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        layer_sites=_std(
            attn="attention",
            gate=Hook("mlp.dense_h_to_4h", "out"),
            act=Hook("mlp.dense_4h_to_h", "in"),
        ),
        linears={
            "qkv": "attention.query_key_value",
            "o": "attention.dense",
            "up": "mlp.dense_h_to_4h",
            "down": "mlp.dense_4h_to_h",
        },
        parallel_residual=lambda cfg: bool(getattr(cfg, "use_parallel_residual", False)),
    ),
]

_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> None:
    """Register (or replace) the adapter of each family in ``adapter.families``."""
    for fam in adapter.families:
        _REGISTRY[fam] = adapter


for _a in ADAPTERS:
    register(_a)


def adapter_for(model_type: str) -> Adapter | None:
    """The registered adapter of ``model_type``, or None (then discovery is tried)."""
    return _REGISTRY.get(model_type)


def registered_families() -> list[str]:
    return sorted(_REGISTRY)
