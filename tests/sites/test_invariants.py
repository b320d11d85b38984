"""Site meaning, tested on every family: the sums that must hold and unchanged logits."""

from __future__ import annotations

import pytest
import torch
from tests._models import REAL_MODELS, TINY_FAMILIES, get_model

from actscope.capture import Trace, forward
from actscope.models import LoadedModel

PARAMS = [pytest.param(f"tiny:{f}", id=f) for f in TINY_FAMILIES] + [
    pytest.param(m, id=m, marks=pytest.mark.slow) for m in REAL_MODELS
]


def _inputs(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["The capital of France is Paris.", "def f(x): return x ** 2"]
    enc = lm.tokenizer(texts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def _capture(lm: LoadedModel) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    ids, mask = _inputs(lm)
    with torch.inference_mode():
        plain = forward(lm.model, ids, mask).logits
        with Trace(lm, "all", retain=True) as tr:
            tr.set_mask(mask)
            observed = forward(lm.model, ids, mask).logits
    return tr.retained, plain, observed


def _close(a: torch.Tensor, b: torch.Tensor, lm: LoadedModel) -> bool:
    tol = 0.0 if a.dtype == torch.float32 else 1e-2
    return torch.allclose(a.float(), b.float(), atol=tol * max(1.0, float(a.abs().max())), rtol=0)


@pytest.mark.parametrize("spec", PARAMS)
def test_residual_sums(spec: str) -> None:
    lm = get_model(spec, "fp32")
    r, _, _ = _capture(lm)
    n = lm.model.config.num_hidden_layers
    parallel = bool(getattr(lm.model.config, "use_parallel_residual", False))
    for i in range(n):
        mid = r[f"resid_pre.{i}"] + r[f"attn_out.{i}"]
        assert torch.equal(r[f"resid_mid.{i}"], mid), f"resid_mid.{i} != resid_pre + attn_out"
        post = r[f"resid_mid.{i}"] + r[f"mlp_out.{i}"]
        if parallel:  # x + (attn + mlp) is summed in another order by the model
            torch.testing.assert_close(r[f"resid_post.{i}"], post, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(r[f"resid_post.{i}"], post), f"resid_post.{i} != resid_mid + mlp_out"
        if i + 1 < n:
            assert torch.equal(r[f"resid_post.{i}"], r[f"resid_pre.{i + 1}"])
    assert torch.equal(r["embed"], r["resid_pre.0"])


@pytest.mark.parametrize("spec", PARAMS)
def test_logits_from_final_norm_and_unchanged_by_observation(spec: str) -> None:
    lm = get_model(spec, "fp32")
    r, plain, observed = _capture(lm)
    assert torch.equal(plain, observed), "observing sites changed the logits"
    assert torch.equal(r["logits"], observed)
    head = lm.model.get_output_embeddings()
    recomputed = head(r["final_norm"])
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        recomputed = torch.tanh(recomputed / cap) * cap
    torch.testing.assert_close(recomputed, observed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", PARAMS)
def test_mlp_and_linear_sites_agree(spec: str) -> None:
    """mlp_act is what the down projection reads; Linear outputs are W x (+ b) of their inputs."""
    lm = get_model(spec, "fp32")
    r, _, _ = _capture(lm)
    names = set(r)
    for i in range(lm.model.config.num_hidden_layers):
        if f"mlp_act.{i}" in names and f"down_in.{i}" in names:
            assert torch.equal(r[f"mlp_act.{i}"], r[f"down_in.{i}"])
        if f"mlp_in.{i}" in names and f"attn_in.{i}" in names:
            assert r[f"mlp_in.{i}"].shape == r[f"attn_in.{i}"].shape
    sm = lm.model._actscope_sitemap
    for name in names:
        site = sm.get(name)
        if site.kind.endswith("_out") and site.kind not in ("attn_out", "mlp_out", "expert_out"):
            mod = sm.module(site)
            x = r[name.replace("_out.", "_in.", 1)]
            torch.testing.assert_close(mod(x), r[name], rtol=1e-5, atol=1e-5)


def test_gemma_embed_includes_scale() -> None:
    lm = get_model("tiny:gemma3", "fp32")
    ids, mask = _inputs(lm)
    with torch.inference_mode(), Trace(lm, "embed", retain=True) as tr:
        forward(lm.model, ids, mask)
    raw = lm.model.get_input_embeddings().weight[ids]
    scale = lm.model.config.hidden_size**0.5
    torch.testing.assert_close(tr["embed"], raw * scale)


def test_gpt2_embed_includes_positions() -> None:
    lm = get_model("tiny:gpt2", "fp32")
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode(), Trace(lm, "embed", retain=True) as tr:
        forward(lm.model, ids)
    tr_ = lm.model.transformer
    expected = tr_.wte.weight[ids] + tr_.wpe.weight[torch.arange(3)].unsqueeze(0)
    torch.testing.assert_close(tr["embed"], expected)


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe", "mixtral"])
def test_moe_expert_sites_sum_to_mlp_out(family: str) -> None:
    """sum_e expert_out.L.e over experts (+ shared expert) reproduces mlp_out.L."""
    lm = get_model(f"tiny:{family}", "fp32")
    r, _, _ = _capture(lm)
    sm = lm.model._actscope_sitemap
    for i in range(sm.n_layers):
        total = sum(r[f"expert_out.{i}.{e}"] for e in range(sm.n_experts))
        if f"shared_down_out.{i}" in r:
            block = sm.model.get_submodule(f"model.layers.{i}.mlp")
            gate = torch.sigmoid(block.shared_expert_gate(r[f"mlp_in.{i}"]))
            total = total + gate * r[f"shared_down_out.{i}"]
        torch.testing.assert_close(total, r[f"mlp_out.{i}"], rtol=1e-4, atol=1e-5)
        assert r[f"router_logits.{i}"].shape[-1] == sm.n_experts
