"""Tiny random models: every family builds, runs on the byte tokenizer, and is mapped."""

from __future__ import annotations

import pytest
import torch

from actscope.models.tiny import BOS, CONFIGS, DISCOVERY_ONLY, VOCAB, build_tiny, byte_tokenizer
from actscope.sites.adapters import adapter_for


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_tiny_family_builds_and_runs(family: str) -> None:
    model = build_tiny(family)
    assert model.config.num_hidden_layers in (2, 4)  # jamba needs 4 to hold both mixers twice
    assert model.get_input_embeddings().weight.shape[0] == VOCAB
    tok = byte_tokenizer()
    enc = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert logits.shape == (2, 4, VOCAB)
    assert torch.isfinite(logits).all()
    has_adapter = adapter_for(str(model.config.model_type)) is not None
    assert has_adapter != (family in DISCOVERY_ONLY)


def test_byte_tokenizer_round_trips_utf8() -> None:
    tok = byte_tokenizer()
    ids = tok("é!", add_special_tokens=False).input_ids
    assert len(ids) == 3 and max(ids) < 256  # one token per UTF-8 byte
    assert tok.decode(ids) == "é!"
    assert tok.convert_tokens_to_ids("<bos>") == BOS
