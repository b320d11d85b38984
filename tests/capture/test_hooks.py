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


def _granite() -> torch.nn.Module:
    """Granite scales both branches by residual_multiplier and the logits by 1/logits_scaling."""
    torch.manual_seed(0)
    cfg = tf.GraniteConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        residual_multiplier=0.25,
        logits_scaling=4.0,
    )
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def test_scaled_site_is_module_output_times_the_factor() -> None:
    model = _granite()
    sm = sitemap_of(model)
    assert sm.get("attn_out.0").scale == 0.25 and sm.get("logits").scale == 0.25
    ids = torch.tensor([[5, 6, 7, 8]])
    raw: dict[str, torch.Tensor] = {}
    attn = model.model.layers[0].self_attn
    h = attn.register_forward_hook(lambda m, a, o: raw.__setitem__("attn", o[0].detach().clone()))
    try:
        with torch.inference_mode(), Trace(sm, ["attn_out.0", "logits"], retain=True) as tr:
            logits = forward(model, ids).logits
    finally:
        h.remove()
    torch.testing.assert_close(tr["attn_out.0"], raw["attn"] * 0.25)
    assert torch.equal(tr["logits"], logits)


def test_an_edit_at_a_scaled_site_is_made_in_the_scaled_space() -> None:
    """Adding delta to attn_out adds exactly delta to resid_mid, whatever the factor."""
    from actscope.capture.hooks import ForwardState, attach

    model = _granite()
    sm = sitemap_of(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    delta = torch.randn(64)
    seen: dict[str, torch.Tensor] = {}
    state = ForwardState()
    with torch.inference_mode():
        with Trace(sm, "resid_mid.0", retain=True) as tr:
            forward(model, ids)
        before = tr["resid_mid.0"].clone()
        edit = attach(sm, sm.get("attn_out.0"), lambda v, m: v + delta, state, edit=True)
        keep = attach(
            sm, sm.get("resid_mid.0"), lambda v, m: seen.setdefault("mid", v.clone()), state
        )
        try:
            forward(model, ids)
        finally:
            edit.remove()
            keep.remove()
    torch.testing.assert_close(seen["mid"] - before, delta.expand_as(before), rtol=1e-5, atol=1e-5)
