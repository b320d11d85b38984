"""Fake-quantized forward passes: what the Linear layers see, and clean restoration."""

from __future__ import annotations

import pytest
import torch
from tests._models import get_model

from actscope.capture.runner import forward
from actscope.capture.trace import Trace
from actscope.errors import ActscopeError
from actscope.interventions.quant import (
    SCHEMES,
    Range,
    fake_quantize,
    linear_sites,
    quantize_weight,
    quantized,
)


def _ids() -> torch.Tensor:
    return torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(0))


def test_linear_sites_cover_every_projection() -> None:
    lm = get_model("tiny:llama", "fp32")
    kinds = {s.kind for s in linear_sites(lm)}
    assert kinds == {f"{k}_in" for k in ("q", "k", "v", "o", "gate", "up", "down")}
    assert len(linear_sites(lm)) == 7 * 2


def test_w8a8_feeds_quantized_inputs_and_weights() -> None:
    lm = get_model("tiny:llama", "fp32")
    ids = _ids()
    q_proj = lm.model.model.layers[1].self_attn.q_proj
    w0 = q_proj.weight.detach().clone()
    with torch.inference_mode():
        with Trace(lm, ["q_in.1", "k_in.1", "down_in.0"], retain=True) as clean:
            ref = forward(lm.model, ids).logits
        with quantized(lm, SCHEMES["W8A8"]):
            torch.testing.assert_close(q_proj.weight, quantize_weight(w0, SCHEMES["W8A8"].weight))
            with Trace(lm, ["q_in.1", "k_in.1", "down_in.0"], retain=True) as seen:
                out = forward(lm.model, ids).logits
        after = forward(lm.model, ids).logits
    spec = SCHEMES["W8A8"].act
    # the observed input of layer 1 is the quantization of what layer 1 received (itself changed
    # by quantization upstream), so compare the quantizer's fixed point: Q(Q(x)) == Q(x)
    for site in ("q_in.1", "down_in.0"):
        x = seen[site]
        torch.testing.assert_close(fake_quantize(x, spec)[0], x)
        assert not torch.equal(x, clean[site])
    assert torch.equal(seen["q_in.1"], seen["k_in.1"])  # shared tensor, one quantization
    assert not torch.equal(out, ref)
    assert torch.equal(after, ref) and torch.equal(q_proj.weight, w0)


def test_first_layer_input_is_exactly_the_fake_quantization() -> None:
    lm = get_model("tiny:llama", "fp32")
    ids = _ids()
    with torch.inference_mode():
        with Trace(lm, ["q_in.0"], retain=True) as clean:
            forward(lm.model, ids)
        with quantized(lm, SCHEMES["W4A8"]), Trace(lm, ["q_in.0"], retain=True) as seen:
            forward(lm.model, ids)
    want = fake_quantize(clean["q_in.0"], SCHEMES["W4A8"].act)[0]
    torch.testing.assert_close(seen["q_in.0"], want)


def test_per_tensor_activations_need_ranges() -> None:
    lm = get_model("tiny:llama", "fp32")
    with pytest.raises(ActscopeError, match="calibration"), quantized(lm, SCHEMES["W8A8-static"]):
        pass
    ranges = {s.name: Range.symmetric(1.0) for s in linear_sites(lm)}
    with (
        torch.inference_mode(),
        quantized(lm, SCHEMES["W8A8-static"], static=ranges),
        Trace(lm, ["o_in.0"], retain=True) as seen,
    ):
        forward(lm.model, _ids())
    codes = seen["o_in.0"] * 127.0  # s = 1/127: every input sits on the grid, within [-1, 1]
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert float(seen["o_in.0"].abs().max()) <= 1.0 + 1e-6
