"""Site meaning, tested on every family: the identities of actscope.sites.verify hold for
every offered site, observation leaves the logits unchanged, scaled sites carry their factor."""

from __future__ import annotations

import pytest
import torch
from tests._models import REAL_MODELS, TINY_FAMILIES, get_model

from actscope.capture import Trace, forward
from actscope.capture.trace import sitemap_of
from actscope.models import LoadedModel
from actscope.models.tiny import DISCOVERY_ONLY
from actscope.sites.adapters import adapter_for

PARAMS = [pytest.param(f"tiny:{f}", id=f) for f in TINY_FAMILIES] + [
    pytest.param(m, id=m, marks=pytest.mark.slow) for m in REAL_MODELS
]


def _inputs(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["The capital of France is Paris.", "def f(x): return x ** 2"]
    enc = lm.tokenizer(texts, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("spec", PARAMS)
def test_every_offered_site_passes_its_identities(spec: str) -> None:
    lm = get_model(spec, "fp32")
    sm = sitemap_of(lm)
    checks = sm.verification.checks
    assert sm.dropped == {} and [c for c in checks if c.status != "pass"] == []
    checked = sm.verification.checked()
    n = sm.n_layers
    # The residual chain is checked on every layer (sites that exist are never left unchecked).
    for i in range(n):
        for name in (f"resid_mid.{i}", f"mlp_out.{i}"):
            if name in sm and (f"attn_out.{i}" in sm or f"ssm_out.{i}" in sm):
                assert name in checked, f"{name} was not checked"
        if i + 1 < n:
            assert f"resid_post.{i}" in checked
    assert "final_norm" in checked


@pytest.mark.parametrize("spec", PARAMS)
def test_observing_every_site_leaves_the_logits_unchanged(spec: str) -> None:
    lm = get_model(spec, "fp32")
    ids, mask = _inputs(lm)
    with torch.inference_mode():
        plain = forward(lm.model, ids, mask).logits
        with Trace(lm, "all", retain=True) as tr:
            tr.set_mask(mask)
            observed = forward(lm.model, ids, mask).logits
    assert torch.equal(plain, observed), "observing sites changed the logits"
    if "logits" in tr.retained:
        assert torch.equal(tr.retained["logits"], observed)


@pytest.mark.parametrize("family", sorted(set(TINY_FAMILIES) - set(DISCOVERY_ONLY)))
def test_families_of_the_tiny_set_have_an_adapter(family: str) -> None:
    lm = get_model(f"tiny:{family}", "fp32")
    assert adapter_for(lm.family) is not None, f"{lm.family} has no adapter"


@pytest.mark.parametrize(
    ("family", "sites", "attr"),
    [
        ("granite", ["attn_out.0", "mlp_out.1"], "residual_multiplier"),
        ("granitemoe", ["attn_out.1", "mlp_out.0"], "residual_multiplier"),
        ("cohere", ["logits"], "logit_scale"),
        ("falcon_h1", ["ssm_out.1"], "ssm_out_multiplier"),
        ("falcon_h1", ["logits"], "lm_head_multiplier"),
    ],
)
def test_scaled_sites_are_offered_with_the_family_factor(
    family: str, sites: list[str], attr: str
) -> None:
    sm = sitemap_of(get_model(f"tiny:{family}", "fp32"))
    for name in sites:
        assert sm.get(name).scale == getattr(sm.config, attr)


def test_hybrid_layers_name_their_mixer() -> None:
    """Jamba (attention every 2nd layer from 1): attention sites only where attention runs."""
    sm = sitemap_of(get_model("tiny:jamba", "fp32"))
    for i in range(sm.n_layers):
        attn, ssm = f"attn_out.{i}" in sm, f"ssm_out.{i}" in sm
        assert attn != ssm
        assert attn == (i % 2 == 1)
    assert "router_logits.1" in sm and "router_logits.0" not in sm


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
    ids, mask = _inputs(lm)
    with torch.inference_mode(), Trace(lm, "all", retain=True) as tr:
        tr.set_mask(mask)
        forward(lm.model, ids, mask)
    r = tr.retained
    sm = lm.model._actscope_sitemap
    for i in range(sm.n_layers):
        total = sum(r[f"expert_out.{i}.{e}"] for e in range(sm.n_experts))
        if f"shared_down_out.{i}" in r:
            block = sm.model.get_submodule(f"model.layers.{i}.mlp")
            gate = torch.sigmoid(block.shared_expert_gate(r[f"mlp_in.{i}"]))
            total = total + gate * r[f"shared_down_out.{i}"]
        torch.testing.assert_close(total, r[f"mlp_out.{i}"], rtol=1e-4, atol=1e-5)
        assert r[f"router_logits.{i}"].shape[-1] == sm.n_experts
