"""Tiny randomly initialised models of every supported family, for tests and quick demos.

``load_model("tiny:qwen3")`` returns a 2-layer model of that family with a byte-level
tokenizer (256 byte tokens + <bos>, <eos>, <pad>), built in well under a second from the
transformers config classes. They exercise architectures that have no small real checkpoint
on this machine: every family with an adapter (dense, MoE and hybrid SSM/attention ones) and, in
:data:`DISCOVERY_ONLY`, a few families that go through discovery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

VOCAB = 259  # 256 bytes + bos + eos + pad
BOS, EOS, PAD = 256, 257, 258

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)
_MOE: dict[str, Any] = dict(num_experts_per_tok=2, moe_intermediate_size=32)
_IDS: dict[str, Any] = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
_GPT: dict[str, Any] = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)
_MAMBA2: dict[str, Any] = dict(
    mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=8
)


def _gpt2() -> Any:
    return tf.GPT2Config(**_GPT, **_IDS)


def _falcon(**kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        return tf.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            **kw,
            **_IDS,
        )

    return make


def _neox(parallel: bool) -> Callable[[], Any]:
    def make() -> Any:
        return tf.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            use_parallel_residual=parallel,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )

    return make


CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: tf.LlamaConfig(**_COMMON),
    "gemma2": lambda: tf.Gemma2Config(**_COMMON, head_dim=16, final_logit_softcapping=30.0),
    "gemma3": lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, head_dim=16),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(
        **_COMMON, **_MOE, num_experts=4, shared_expert_intermediate_size=64
    ),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**_COMMON, **_MOE, num_experts=4, head_dim=16),
    "mixtral": lambda: tf.MixtralConfig(
        **{**_COMMON, "intermediate_size": 32}, num_local_experts=4, num_experts_per_tok=2
    ),
    "olmo2": lambda: tf.Olmo2Config(**_COMMON),
    "phi3": lambda: tf.Phi3Config(**_COMMON),
    "gpt2": _gpt2,
    "gpt_neox": _neox(parallel=True),
    "gpt_neox_seq": _neox(parallel=False),
    # muP families: branch, embedding and logit multipliers away from 1 on purpose.
    "granite": lambda: tf.GraniteConfig(
        **_COMMON, residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=4.0
    ),
    "granitemoe": lambda: tf.GraniteMoeConfig(
        **_COMMON,
        num_local_experts=4,
        num_experts_per_tok=2,
        residual_multiplier=0.5,
        logits_scaling=4.0,
    ),
    "cohere": lambda: tf.CohereConfig(**_COMMON, logit_scale=0.5),
    "cohere2": lambda: tf.Cohere2Config(**_COMMON, logit_scale=0.5, sliding_window=8),
    "olmo": lambda: tf.OlmoConfig(**_COMMON),
    "olmo3": lambda: tf.Olmo3Config(**_COMMON, sliding_window=8),
    "olmoe": lambda: tf.OlmoeConfig(
        **{**_COMMON, "intermediate_size": 32}, num_experts=4, num_experts_per_tok=2
    ),
    "starcoder2": lambda: tf.Starcoder2Config(**_COMMON),
    "stablelm": lambda: tf.StableLmConfig(**_COMMON),
    "phi": lambda: tf.PhiConfig(**_COMMON),
    "falcon": _falcon(),
    "falcon_new": _falcon(new_decoder_architecture=True, num_kv_heads=2),
    "falcon_seq": _falcon(parallel_attn=False),
    "bloom": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, **_IDS),
    "opt": lambda: tf.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        word_embed_proj_dim=64,
        **_IDS,
    ),
    "gptj": lambda: tf.GPTJConfig(**_GPT, rotary_dim=8, **_IDS),
    "codegen": lambda: tf.CodeGenConfig(**_GPT, n_ctx=256, rotary_dim=8, **_IDS),
    "gemma": lambda: tf.GemmaConfig(**_COMMON, head_dim=16),
    "glm4": lambda: tf.Glm4Config(**_COMMON),
    "smollm3": lambda: tf.SmolLM3Config(**_COMMON),
    "deepseek_v3": lambda: tf.DeepseekV3Config(
        **{**_COMMON, "num_key_value_heads": 4},
        **_MOE,
        n_routed_experts=4,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    ),
    "gpt_oss": lambda: tf.GptOssConfig(
        **{**_COMMON, "intermediate_size": 32},
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
    ),
    "llama4": lambda: tf.Llama4TextConfig(
        **_COMMON,
        head_dim=16,
        intermediate_size_mlp=128,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
    ),
    "dbrx": lambda: tf.DbrxConfig(
        d_model=64,
        n_heads=4,
        n_layers=2,
        max_seq_len=256,
        vocab_size=VOCAB,
        attn_config={"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
        **_IDS,
    ),
    # Hybrids: Mamba mixers in some layers (jamba, bamba) or beside attention (falcon_h1).
    "falcon_h1": lambda: tf.FalconH1Config(
        **_COMMON,
        **_MAMBA2,
        mamba_d_ssm=64,
        mamba_d_head=16,
        attention_out_multiplier=0.5,
        ssm_out_multiplier=2.0,
        lm_head_multiplier=0.5,
    ),
    "jamba": lambda: tf.JambaConfig(
        **{**_COMMON, "num_hidden_layers": 4},
        num_experts=4,
        num_experts_per_tok=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=8,
        mamba_dt_rank=8,
    ),
    "bamba": lambda: tf.BambaConfig(**_COMMON, **_MAMBA2, attn_layer_indices=[1], mamba_d_head=32),
}

DISCOVERY_ONLY: dict[str, Callable[[], Any]] = {
    "lfm2": lambda: tf.Lfm2Config(**_COMMON, layer_types=["conv", "full_attention"]),
    "qwen3_next": lambda: tf.Qwen3NextConfig(
        **_COMMON,
        **_MOE,
        num_experts=4,
        head_dim=16,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    ),
    "mpt": lambda: tf.MptConfig(
        d_model=64, n_heads=4, n_layers=2, vocab_size=VOCAB, max_seq_len=256, **_IDS
    ),
    "persimmon": lambda: tf.PersimmonConfig(**_COMMON),
    "nemotron": lambda: tf.NemotronConfig(**_COMMON),
    "exaone4": lambda: tf.Exaone4Config(**_COMMON),
    "seed_oss": lambda: tf.SeedOssConfig(**_COMMON, head_dim=16),
    "ernie4_5": lambda: tf.Ernie4_5Config(**_COMMON, head_dim=16),
}
"""Families without an adapter, mapped by discovery (kept apart so tests can name them)."""
CONFIGS.update(DISCOVERY_ONLY)

PARTIAL: dict[str, Callable[[], Any]] = {
    "mamba": lambda: tf.MambaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=8, **_IDS
    ),
    "granitemoehybrid": lambda: tf.GraniteMoeHybridConfig(
        **_COMMON,
        **_MAMBA2,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["mamba", "attention"],
        mamba_d_head=32,
        residual_multiplier=0.5,
    ),
    "glm4_moe": lambda: tf.Glm4MoeConfig(
        **_COMMON,
        **_MOE,
        n_routed_experts=4,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        head_dim=16,
    ),
    "ernie4_5_moe": lambda: tf.Ernie4_5_MoeConfig(
        **_COMMON, **_MOE, moe_num_experts=4, moe_k=2, head_dim=16
    ),
}
"""Discovery-only families that lack part of the core vocabulary by design (no MLP in Mamba;
muP-scaled branches and two parallel MLPs in GraniteMoeHybrid) or are extra MoE layouts: built
by :func:`build_tiny` for the compatibility table and the discovery tests, not loadable as
``tiny:`` models."""


def byte_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per UTF-8 byte, plus <bos>, <eos> and <pad>."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    vocab.update({"<bos>": BOS, "<eos>": EOS, "<pad>": PAD})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    return fast


def build_tiny(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A randomly initialised 2-layer causal LM of ``family`` (:data:`CONFIGS`, :data:`PARTIAL`)."""
    torch.manual_seed(seed)
    cfg = (CONFIGS.get(family) or PARTIAL[family])()
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()
