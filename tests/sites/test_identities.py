"""The shared identity checks pass on correct maps and catch wrong ones."""

from __future__ import annotations

import dataclasses

import torch
from tests._models import get_model

from actscope.sites.adapters import Hook, adapter_for
from actscope.sites.identities import check_sitemap, error, failures, probe_inputs
from actscope.sites.sitemap import SiteMap


def test_error_is_relative_to_the_reference_scale() -> None:
    a = torch.tensor([100.0, 0.0])
    assert error(a + 1, a) == 1 / 100
    assert error(torch.zeros(2), torch.full((2,), 0.5)) == 0.5
    assert error(torch.zeros(2), torch.zeros(3)) == float("inf")


def test_probe_is_padded() -> None:
    ids, mask = probe_inputs(259)
    assert ids.shape == mask.shape == (2, 6)
    assert mask[1, :2].sum() == 0 and mask[0].all()
    assert int(ids.max()) < 259


def test_correct_map_passes() -> None:
    sm = SiteMap(get_model("tiny:llama").model)
    checks = check_sitemap(sm)
    assert failures(checks) == {}
    assert {"resid_mid.0", "mlp_out.1", "resid_post.0", "final_norm", "logits", "q_out.0"} <= {
        c.site for c in checks
    }


def test_wrong_attn_out_is_caught() -> None:
    """attn_out taken at the attention input breaks resid_mid = resid_pre + attn_out."""
    model = get_model("tiny:llama").model
    good = adapter_for("llama")
    assert good is not None
    wrong = dataclasses.replace(
        good, layer_sites={**good.layer_sites, "attn_out": Hook("self_attn", "in")}
    )
    bad = failures(check_sitemap(SiteMap(model, wrong)))
    assert set(bad) == {"resid_mid.0", "resid_mid.1"}
    assert "resid_mid == resid_pre + attn_out" in bad["resid_mid.0"]


def test_bloom_raw_module_output_is_caught() -> None:
    """BLOOM adds the residual inside attention: its raw output is not attn_out."""
    model = get_model("tiny:bloom").model
    good = adapter_for("bloom")
    assert good is not None
    raw = dataclasses.replace(
        good,
        layer_sites={
            **good.layer_sites,
            "attn_out": Hook("self_attention", "out"),
            "mlp_out": Hook("mlp", "out"),
        },
    )
    bad = failures(check_sitemap(SiteMap(model, raw)))
    assert "resid_mid.0" in bad and "mlp_out.0" in bad


def test_unscaled_logits_are_caught() -> None:
    """Cohere multiplies the lm_head output by logit_scale: without the scale, final_norm fails."""
    model = get_model("tiny:cohere").model
    good = adapter_for("cohere")
    assert good is not None
    bad = failures(check_sitemap(SiteMap(model, dataclasses.replace(good, logits_scale=None))))
    assert "logits" in bad and "final_norm" in bad
