"""Hook-level behaviour: flattened token rows restored to (batch, seq, ...) with their mask."""

from __future__ import annotations

import torch
import transformers as tf

from actscope.capture import Trace, forward, sitemap_of
from actscope.models.tiny import VOCAB


def _llama4() -> torch.nn.Module:
    """Llama 4 text: every layer's MoE block returns (batch*seq, d)."""
    torch.manual_seed(0)
    cfg = tf.Llama4TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        intermediate_size_mlp=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
    )
    return tf.Llama4ForCausalLM(cfg).eval()


def test_flattened_moe_output_is_batch_seq_and_gets_the_mask() -> None:
    model = _llama4()
    sm = sitemap_of(model)
    assert "mlp_out.0" in sm and "mlp_out.0" not in sm.dropped
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    masks: dict[str, torch.Tensor | None] = {}
    with (
        torch.inference_mode(),
        Trace(
            sm,
            ["resid_pre.0", "attn_out.0", "mlp_out.0", "resid_post.0"],
            retain=True,
            consumers=[lambda s, v, m: masks.__setitem__(s, m)],
        ) as tr,
    ):
        tr.set_mask(mask)
        forward(model, ids, mask)
    assert tr["mlp_out.0"].shape == (2, 5, 64)
    for site in ("mlp_out.0", "resid_post.0"):
        got = masks[site]
        assert got is not None and torch.equal(got, mask.bool())
    total = tr["resid_pre.0"] + tr["attn_out.0"] + tr["mlp_out.0"]
    torch.testing.assert_close(tr["resid_post.0"], total, rtol=1e-5, atol=1e-5)
