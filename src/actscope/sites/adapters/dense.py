"""Adapters of dense decoder families (one attention and one MLP per layer)."""

from __future__ import annotations

from actscope.sites.adapters.base import (
    LLAMA_LINEARS,
    Adapter,
    Hook,
    Scale,
    linears,
    std_sites,
)

_POST_NORMED = std_sites(
    mid="mlp",
    attn_out=Hook("post_attention_layernorm", "out"),
    mlp_out=Hook("post_feedforward_layernorm", "out"),
)
_QKVO = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}

DENSE: list[Adapter] = [
    Adapter(
        families=("llama", "mistral", "qwen2", "qwen3"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(),
        linears=LLAMA_LINEARS,
    ),
    Adapter(
        families=("smollm3", "olmo", "gemma"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(),
        linears=LLAMA_LINEARS,
        notes="Llama layout; gemma's embed includes the sqrt(hidden_size) scale",
    ),
    Adapter(
        # Gemma 2/3 norm attention and MLP outputs before adding them (sandwich norms).
        families=("gemma2", "gemma3_text", "gemma3"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(
            mid="pre_feedforward_layernorm",
            attn_out=Hook("post_attention_layernorm", "out"),
            mlp_out=Hook("post_feedforward_layernorm", "out"),
        ),
        linears=LLAMA_LINEARS,
        notes="embed includes the sqrt(hidden_size) scale applied by the scaled embedding",
    ),
    Adapter(
        # OLMo2 has no pre-norms: attention and MLP read the raw residual, their outputs are normed.
        families=("olmo2",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_POST_NORMED,
        linears=LLAMA_LINEARS,
    ),
    Adapter(
        # OLMo3: OLMo2's post-norms (post_attention_layernorm normalises the attention output).
        families=("olmo3",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=_POST_NORMED,
        linears=LLAMA_LINEARS,
    ),
    Adapter(
        # GLM-4: pre-norms and post-norms on both branches; fused gate_up projection.
        families=("glm4",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(
            attn_out=Hook("post_self_attn_layernorm", "out"),
            mlp_out=Hook("post_mlp_layernorm", "out"),
            gate=Hook("mlp.gate_up_proj", "out", part=(0, 2)),
        ),
        linears=linears(**_QKVO, o="o_proj", gate_up="gate_up_proj", down="down_proj"),
    ),
    Adapter(
        families=("phi3",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(gate=Hook("mlp.gate_up_proj", "out", part=(0, 2))),
        linears={
            "qkv": "self_attn.qkv_proj",
            "o": "self_attn.o_proj",
            "gate_up": "mlp.gate_up_proj",
            "down": "mlp.down_proj",
        },
    ),
    Adapter(
        # Granite scales both branches by residual_multiplier and divides the logits by
        # logits_scaling outside any module (muP).
        families=("granite",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(
            attn_out=Hook("self_attn", "out", scale=Scale("residual_multiplier")),
            mlp_out=Hook("mlp", "out", scale=Scale("residual_multiplier")),
        ),
        linears=LLAMA_LINEARS,
        logits_scale=Scale("logits_scaling", invert=True),
        notes="embed includes embedding_multiplier",
    ),
    Adapter(
        # Cohere: attention and MLP read the same normed input (parallel); logits * logit_scale.
        families=("cohere", "cohere2"),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(),
        linears=LLAMA_LINEARS,
        parallel_residual=lambda cfg: True,
        logits_scale=Scale("logit_scale"),
    ),
    Adapter(
        families=("stablelm",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(),
        linears=LLAMA_LINEARS,
        parallel_residual=lambda cfg: bool(getattr(cfg, "use_parallel_residual", False)),
    ),
    Adapter(
        families=("starcoder2",),
        layers="model.layers",
        final_norm="model.norm",
        layer_sites=std_sites(gate=Hook("mlp.c_fc", "out"), act=Hook("mlp.c_proj", "in")),
        linears=linears(**_QKVO, o="o_proj", up="c_fc", down="c_proj"),
    ),
    Adapter(
        # Phi-1/2: parallel attention and MLP on one LayerNorm output.
        families=("phi",),
        layers="model.layers",
        final_norm="model.final_layernorm",
        layer_sites=std_sites(gate=Hook("mlp.fc1", "out"), act=Hook("mlp.fc2", "in")),
        linears=linears(**_QKVO, o="dense", up="fc1", down="fc2"),
        parallel_residual=lambda cfg: True,
    ),
    Adapter(
        families=("gpt2",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=std_sites(
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
        layer_sites=std_sites(
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
    Adapter(
        # Falcon: parallel attention (+ MLP) unless parallel_attn=False on the old architecture.
        families=("falcon",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=std_sites(
            attn="self_attention",
            gate=Hook("mlp.dense_h_to_4h", "out"),
            act=Hook("mlp.dense_4h_to_h", "in"),
        ),
        linears=linears(
            "self_attention",
            qkv="query_key_value",
            o="dense",
            up="dense_h_to_4h",
            down="dense_4h_to_h",
        ),
        parallel_residual=lambda cfg: bool(cfg.parallel_attn or cfg.new_decoder_architecture),
        notes="parallel Falcon adds attention into the MLP output in place after the hook",
    ),
    Adapter(
        # BLOOM adds the residual inside attention and MLP: the branch is the last projection.
        families=("bloom",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=std_sites(
            attn="self_attention",
            attn_out=Hook("self_attention.dense", "out"),
            mlp_out=Hook("mlp.dense_4h_to_h", "out"),
            gate=Hook("mlp.dense_h_to_4h", "out"),
            act=Hook("mlp.dense_4h_to_h", "in"),
        ),
        linears=linears(
            "self_attention",
            qkv="query_key_value",
            o="dense",
            up="dense_h_to_4h",
            down="dense_4h_to_h",
        ),
        notes="embed is after word_embeddings_layernorm (what enters layer 0)",
    ),
    Adapter(
        # OPT: fc1/fc2 sit directly in the layer, and the layer flattens the rows to
        # (batch*seq, d) before its MLP part (capture reshapes them); final_layer_norm is the
        # pre-MLP norm.
        families=("opt",),
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        layer_sites=std_sites(
            mid="final_layer_norm",
            mlp="fc1",
            mlp_out=Hook("fc2", "out"),
            gate=Hook("fc1", "out"),
            act=Hook("fc2", "in"),
        ),
        linears={**linears(**_QKVO, o="out_proj"), "up": "fc1", "down": "fc2"},
        notes="pre-LayerNorm OPT (do_layer_norm_before=True, all sizes but 350m); resid_mid is "
        "final_layer_norm's flattened input, reshaped by capture",
    ),
    Adapter(
        families=("gptj",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=std_sites(
            attn="attn", gate=Hook("mlp.fc_in", "out"), act=Hook("mlp.fc_out", "in")
        ),
        linears=linears("attn", **_QKVO, o="out_proj", up="fc_in", down="fc_out"),
        parallel_residual=lambda cfg: True,
    ),
    Adapter(
        families=("codegen",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        layer_sites=std_sites(
            attn="attn", gate=Hook("mlp.fc_in", "out"), act=Hook("mlp.fc_out", "in")
        ),
        linears=linears("attn", qkv="qkv_proj", o="out_proj", up="fc_in", down="fc_out"),
        parallel_residual=lambda cfg: True,
    ),
]
