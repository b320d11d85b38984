"""Tiny randomly initialised models of every supported family, for tests and quick demos.

``load_model("tiny:qwen3")`` returns a 2-layer model of that family with a byte-level
tokenizer (256 byte tokens + <bos>, <eos>, <pad>), built in well under a second from the
transformers config classes. They exercise architectures that have no small real checkpoint
on this machine (MoE, GPT-2, GPT-NeoX, Phi-3, OLMo2, Gemma 2, Qwen).
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


def _gpt2() -> Any:
    return tf.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


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
}


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
    """A randomly initialised 2-layer causal LM of ``family`` (see :data:`CONFIGS`)."""
    torch.manual_seed(seed)
    cfg = CONFIGS[family]()
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()
