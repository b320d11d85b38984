"""The adapter format: registry, named mechanisms (Scale, dropped), the families of issue 16."""

from __future__ import annotations

import dataclasses

import pytest
import transformers as tf

from actscope.models.tiny import _COMMON
from actscope.sites.adapters import ADAPTERS, Adapter, Hook, Scale, adapter_for, register
from actscope.sites.sitemap import SiteMap

ISSUE_16 = [
    *("granite", "granitemoe", "cohere", "cohere2", "olmo", "olmo3", "olmoe", "starcoder2"),
    *("stablelm", "phi", "falcon", "bloom", "opt", "gptj", "codegen", "gemma", "glm4"),
    *("deepseek_v3", "gpt_oss", "llama4_text", "dbrx", "smollm3", "falcon_h1", "jamba", "bamba"),
]


@pytest.mark.parametrize("family", ISSUE_16)
def test_family_has_an_adapter(family: str) -> None:
    assert adapter_for(family) is not None


def test_each_family_is_registered_once() -> None:
    seen = [f for a in ADAPTERS for f in a.families]
    assert len(seen) == len(set(seen))


def test_register_replaces_a_family() -> None:
    old = adapter_for("llama")
    assert old is not None
    new = dataclasses.replace(old, families=("llama",), notes="replaced")
    try:
        register(new)
        assert adapter_for("llama") is new
    finally:
        register(old)
    assert adapter_for("llama") is old


def test_scale_factor() -> None:
    cfg = type("C", (), {"residual_multiplier": 0.25, "logits_scaling": 8.0})()
    assert Scale("residual_multiplier").factor(cfg) == 0.25
    assert Scale("logits_scaling", invert=True).factor(cfg) == 1 / 8
    assert Scale("absent").factor(cfg) == 1.0
    assert Scale(value=0.5).factor(cfg) == 0.5


def _granite(multiplier: float, scaling: float) -> SiteMap:
    cfg = tf.GraniteConfig(**_COMMON, residual_multiplier=multiplier, logits_scaling=scaling)
    return SiteMap(tf.AutoModelForCausalLM.from_config(cfg).eval())


def test_scaled_branch_carries_its_factor_only_when_it_is_not_one() -> None:
    """A scale of 1 changes nothing; another is the site's ``scale`` (capture applies it)."""
    plain = _granite(1.0, 1.0)
    assert plain.get("attn_out.0").scale is None and plain.get("logits").scale is None
    scaled = _granite(0.5, 2.0)
    assert scaled.get("mlp_out.1").scale == 0.5 and scaled.get("logits").scale == 0.5
    assert scaled.dropped == {}


def test_dropped_by_kind_and_by_site_name() -> None:
    model = _granite(1.0, 1.0).model
    base = adapter_for("granite")
    assert base is not None
    a = dataclasses.replace(base, dropped={"mlp_gate": "kind reason", "q_in.1": "one site"})
    sm = SiteMap(model, a)
    assert "mlp_gate.0" not in sm and sm.dropped["mlp_gate.1"] == "kind reason"
    assert "q_in.0" in sm and "q_in.1" not in sm and sm.dropped["q_in.1"] == "one site"


def test_adapter_tables_name_known_kinds() -> None:
    from actscope.sites.vocabulary import LAYER_KINDS

    for a in ADAPTERS:
        assert isinstance(a, Adapter)
        assert set(a.layer_sites) <= set(LAYER_KINDS), a.families
        assert all(isinstance(h, Hook) for h in a.layer_sites.values())
