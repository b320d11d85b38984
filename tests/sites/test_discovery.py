"""Discovery by structure and probe: the family shapes of issue 16, without family names."""

from __future__ import annotations

import pytest
from tests._models import get_model

from actscope.models.tiny import CONFIGS, DISCOVERY_ONLY, PARTIAL, build_tiny
from actscope.sites.adapters import adapter_for
from actscope.sites.discovery import discover
from actscope.sites.sitemap import SiteMap
from actscope.sites.verify import verify_sitemap
from actscope.sites.vocabulary import LAYER_KINDS

# Where discovery and the adapter legitimately differ (discovery offers less or more).
_KNOWN = {
    "dbrx": {"router_logits"},  # DBRX's experts are not fused 3-D weights: expert count unknown
}


def _discovered(family: str) -> SiteMap:
    model = get_model(f"tiny:{family}").model if family in CONFIGS else build_tiny(family)
    return SiteMap(model, discover(model))


@pytest.mark.parametrize("family", sorted(set(CONFIGS) - set(DISCOVERY_ONLY)))
def test_discovery_finds_what_the_adapter_maps(family: str) -> None:
    """Every per-layer site of the adapter is found by discovery, on the same tensor."""
    model = get_model(f"tiny:{family}").model
    ref = SiteMap(model, adapter_for(str(model.config.model_type)))
    got = SiteMap(model, discover(model))
    for name in ref.names:
        site = ref.get(name)
        if site.kind not in LAYER_KINDS or site.kind in _KNOWN.get(family, set()):
            continue
        assert name in got, f"{family}: discovery lacks {name}"
        if site.mode != "derived":
            assert (got.get(name).module, got.get(name).mode) == (site.module, site.mode), name


@pytest.mark.parametrize("family", sorted(DISCOVERY_ONLY))
def test_discovered_family_passes_identities_with_full_residual_chain(family: str) -> None:
    sm = _discovered(family)
    res = verify_sitemap(sm.model, sm)
    assert res.error is None and res.dropped == {}
    checked = res.checked()
    for i in range(sm.n_layers):
        assert f"resid_mid.{i}" in checked and f"mlp_out.{i}" in checked


@pytest.mark.parametrize("family", sorted(PARTIAL))
def test_partial_family_says_why_each_missing_site_is_missing(family: str) -> None:
    """No MLP (Mamba), scaled branches and two MLPs side by side (GraniteMoeHybrid), ..."""
    sm = _discovered(family)
    res = verify_sitemap(sm.model, sm)
    assert res.error is None and res.dropped == {}
    checked = res.checked()
    for i in range(sm.n_layers):
        for kind in ("resid_mid", "mlp_out"):
            assert f"{kind}.{i}" in checked or f"{kind}.{i}" in sm.dropped, f"{kind}.{i}"
        mixers = [
            k for k in ("attn_out", "ssm_out") if f"{k}.{i}" in sm or f"{k}.{i}" in sm.dropped
        ]
        assert mixers, f"layer {i} has no mixer site"


def test_two_parallel_mlps_and_scaled_mixers() -> None:
    sm = _discovered("granitemoehybrid")
    assert "resid_mid.0" in sm and sm.get("ssm_out.0").scale == 0.5
    assert "0.5 x block_sparse_moe, 0.5 x shared_mlp" in sm.dropped["mlp_out.0"]


def test_residual_inside_the_module_takes_the_inner_projection() -> None:
    sm = _discovered("bloom")
    assert sm.get("attn_out.0").module.endswith("self_attention.dense")
    assert sm.get("mlp_out.1").module.endswith("mlp.dense_4h_to_h")


@pytest.mark.parametrize(
    ("family", "attn_out", "mlp_out"),
    [
        ("glm4", "post_self_attn_layernorm", "post_mlp_layernorm"),
        ("olmo3", "post_attention_layernorm", "post_feedforward_layernorm"),
    ],
)
def test_post_norms_are_what_is_added(family: str, attn_out: str, mlp_out: str) -> None:
    sm = _discovered(family)
    assert sm.get("attn_out.0").module.endswith(attn_out)
    assert sm.get("mlp_out.0").module.endswith(mlp_out)


def test_scaled_branches_carry_the_measured_factor() -> None:
    sm = _discovered("granite")
    assert sm.get("attn_out.0").scale == 0.5 and "resid_mid.0" in sm
    assert sm.get("logits").scale == sm.config.logits_scaling**-1


def test_parallel_residual_derives_resid_mid() -> None:
    sm = _discovered("cohere")
    assert sm.get("resid_mid.0").mode == "derived"
    assert sm.get("logits").scale == sm.config.logit_scale


def test_hybrid_every_layer_is_inspected() -> None:
    sm = _discovered("jamba")
    for i in range(sm.n_layers):
        assert (f"attn_out.{i}" in sm) == (i % 2 == 1)
        assert (f"ssm_out.{i}" in sm) == (i % 2 == 0)
    assert "router_logits.1" in sm and "expert_out.3.0" in sm


def test_linear_sites_get_shared_names() -> None:
    sm = _discovered("deepseek_v3")
    assert "o_in.0" in sm and "gate_in.0" in sm  # dense layer 0
    assert "shared_gate_in.1" in sm and "router_logits.1" in sm  # MoE layer 1
    assert not any(n.startswith("self_attn_o_proj") for n in sm.names)


def test_projections_in_the_layer_and_other_norm_names() -> None:
    opt = _discovered("opt")
    assert "q_in.0" in opt and "attn_out.1" in opt
    assert opt.get("resid_mid.0").module.endswith("final_layer_norm")  # flattened, reshaped
    assert "mlp_out.0" in opt and "up_in.1" in opt  # flattened rows inside the layer, reshaped
    lfm = _discovered("lfm2")
    assert lfm.adapter.final_norm.endswith("embedding_norm")
    assert "conv_out.0" in lfm and "attn_out.1" in lfm and "attn_out.0" not in lfm
    dbrx = _discovered("dbrx")
    assert dbrx.get("attn_out.0").module.endswith("norm_attn_norm.attn")
