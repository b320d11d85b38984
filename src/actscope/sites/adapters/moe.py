"""Adapters of mixture-of-experts families (router and expert sites where the block allows)."""

from __future__ import annotations

from actscope.sites.adapters.base import (
    ATTN_LINEARS,
    LLAMA_LINEARS,
    Adapter,
    Hook,
    Scale,
    std_sites,
)

_SHARED = {
    "shared_gate": "mlp.shared_expert.gate_proj",
    "shared_up": "mlp.shared_expert.up_proj",
    "shared_down": "mlp.shared_expert.down_proj",
}

MOE: list[Adapter] = [
    Adapter(
        families=("qwen2_moe", "qwen3_moe", "mixtral"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(gated=False),
        linears={**ATTN_LINEARS, **_SHARED},
        router="mlp.gate",
        experts="mlp.experts",
        notes="per-expert sites recompute the expert MLP from the fused expert weights",
    ),
    Adapter(
        families=("olmoe",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(gated=False),
        linears=ATTN_LINEARS,
        router="mlp.gate",
        experts="mlp.experts",
    ),
    Adapter(
        # GraniteMoE: Granite's scaled branches and logits around a fused-expert MoE block.
        families=("granitemoe",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(
            mlp="block_sparse_moe",
            attn_out=Hook("self_attn", "out", scale=Scale("residual_multiplier")),
            mlp_out=Hook("block_sparse_moe", "out", scale=Scale("residual_multiplier")),
            gated=False,
        ),
        linears=ATTN_LINEARS,
        router="block_sparse_moe.router",
        experts="block_sparse_moe.experts",
        logits_scale=Scale("logits_scaling", invert=True),
    ),
    Adapter(
        # DeepSeek-V3: multi-head latent attention; dense MLPs in the first layers, then MoE
        # blocks (router mlp.gate, fused routed experts, shared experts).
        families=("deepseek_v3",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(),
        linears={
            "q_a": "self_attn.q_a_proj",
            "q_b": "self_attn.q_b_proj",
            "q": "self_attn.q_proj",
            "kv_a": "self_attn.kv_a_proj_with_mqa",
            "kv_b": "self_attn.kv_b_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
            "shared_gate": "mlp.shared_experts.gate_proj",
            "shared_up": "mlp.shared_experts.up_proj",
            "shared_down": "mlp.shared_experts.down_proj",
        },
        router="mlp.gate",
        experts="mlp.experts",
    ),
    Adapter(
        # gpt-oss experts use interleaved gate/up with biases and a clamped SwiGLU: no
        # recomputed expert sites.
        families=("gpt_oss",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(gated=False),
        linears=ATTN_LINEARS,
        router="mlp.router",
    ),
    Adapter(
        # Llama 4 (text): dense and MoE layers interleaved under feed_forward. A MoE block
        # returns (flattened (batch*seq, d) rows, router logits); capture takes the rows and
        # reshapes them, so mlp_out is the block's output on every layer.
        families=("llama4_text",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(mlp="feed_forward"),
        linears={
            **{k: v.replace("mlp.", "feed_forward.") for k, v in LLAMA_LINEARS.items()},
            **{k: v.replace("mlp.", "feed_forward.") for k, v in _SHARED.items()},
        },
        router="feed_forward.router",
        router_output=1,
        notes="MoE blocks return flattened (batch*seq, d) rows, reshaped by capture; the "
        "router returns (scores, logits)",
    ),
    Adapter(
        # DBRX: attention sits inside norm_attn_norm, which also adds the residual and applies
        # the pre-MLP norm (norm_2).
        families=("dbrx",),
        layers="transformer.blocks",
        final_norm="transformer.norm_f",
        layer_sites=std_sites(
            attn="norm_attn_norm.attn", mid="norm_attn_norm.norm_2", mlp="ffn", gated=False
        ),
        linears={"qkv": "norm_attn_norm.attn.Wqkv", "o": "norm_attn_norm.attn.out_proj"},
        router="ffn.router",
    ),
]
