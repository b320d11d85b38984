"""Adapters of hybrid families: attention in some layers, SSM (Mamba) mixers in others or beside.

A layer's token mixer gets the sites of its kind (``attn_*`` or ``ssm_*``, see
:data:`actscope.sites.vocabulary.MIXER_KINDS`); attention sites exist only in layers that run
attention. The residual identity of such a layer is resid_mid = resid_pre + the sum of its
mixers' outputs.
"""

from __future__ import annotations

from actscope.sites.adapters.base import LLAMA_LINEARS, Adapter, Hook, Scale, std_sites

_LINEARS = {
    **{k: v.replace("mlp.", "feed_forward.") for k, v in LLAMA_LINEARS.items()},
    "ssm_in_proj": "mamba.in_proj",
    "ssm_out_proj": "mamba.out_proj",
}
_MAMBA = {"ssm_in": Hook("mamba", "in"), "ssm_out": Hook("mamba", "out")}

HYBRID: list[Adapter] = [
    Adapter(
        families=("jamba",),
        layers="model.layers",
        final_norm="model.final_layernorm",
        layer_sites={**std_sites(mlp="feed_forward", mid="pre_ff_layernorm"), **_MAMBA},
        linears={**_LINEARS, "ssm_x_proj": "mamba.x_proj"},  # dt_proj runs as a weight, not a call
        router="feed_forward.router",
        experts="feed_forward.experts",
    ),
    Adapter(
        families=("bamba",),
        layers="model.layers",
        final_norm="model.final_layernorm",
        layer_sites={**std_sites(mlp="feed_forward", mid="pre_ff_layernorm"), **_MAMBA},
        linears=_LINEARS,
    ),
    Adapter(
        # Falcon-H1: attention and Mamba run side by side on the same normed input; their
        # outputs are scaled (muP multipliers) outside the modules, as are the logits.
        families=("falcon_h1",),
        layers="model.layers",
        final_norm="model.final_layernorm",
        layer_sites={
            **std_sites(
                mlp="feed_forward",
                mid="pre_ff_layernorm",
                attn_out=Hook("self_attn", "out", scale=Scale("attention_out_multiplier")),
            ),
            "ssm_in": Hook("mamba", "in"),
            "ssm_out": Hook("mamba", "out", scale=Scale("ssm_out_multiplier")),
        },
        linears=_LINEARS,
        logits_scale=Scale("lm_head_multiplier"),
        notes="mlp_gate is gate_proj's output, before the gate multiplier and the activation",
    ),
]
