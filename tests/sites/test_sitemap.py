"""Name resolution, patterns, errors, adapters and discovery."""

from __future__ import annotations

import pytest
import torch
from tests._models import TINY_FAMILIES, get_model
from torch import nn

from actscope.errors import LayerOutOfRangeError, UnknownSiteError, UnsupportedFamilyError
from actscope.sites import SiteMap, describe_kind
from actscope.sites.discovery import discover


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_has_the_core_vocabulary(family: str) -> None:
    sm = SiteMap(get_model(f"tiny:{family}").model)
    for kind in (
        "embed",
        "resid_pre",
        "attn_in",
        "attn_out",
        "resid_mid",
        "mlp_in",
        "mlp_out",
        "resid_post",
        "final_norm",
        "logits",
    ):
        # A kind the family has but no hooked tensor holds is recorded with its reason.
        held = kind in sm.kinds() or kind.replace("attn_", "ssm_") in sm.kinds()
        assert held or any(n.split(".")[0] == kind for n in sm.dropped), f"{family} lacks {kind}"
    for kind in sm.kinds():
        assert describe_kind(kind)
    if family in ("qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "granitemoe", "qwen3_next"):
        assert "router_logits" in sm.kinds() and "expert_act" in sm.kinds()
    elif family not in ("gpt_oss", "dbrx", "opt"):  # MoE without recomputed experts; OPT
        assert "mlp_gate" in sm.kinds() and "mlp_act" in sm.kinds()


def test_patterns_and_order() -> None:
    sm = SiteMap(get_model("tiny:llama").model)
    assert [s.name for s in sm.resolve("resid_post")] == ["resid_post.0", "resid_post.1"]
    assert [s.name for s in sm.resolve("resid_post.-1")] == ["resid_post.1"]
    assert {s.name for s in sm.resolve("q_*.0")} == {"q_in.0", "q_out.0"}
    both = sm.resolve(["resid_post.1", "embed", "resid_post.1"])
    assert [s.name for s in both] == ["embed", "resid_post.1"]
    assert len(sm.resolve("all")) == len(sm.names)


def test_unknown_site_suggests_close_matches() -> None:
    sm = SiteMap(get_model("tiny:llama").model)
    with pytest.raises(UnknownSiteError, match="did you mean: resid_post"):
        sm.get("resid_pots.1")
    with pytest.raises(UnknownSiteError):
        sm.resolve("nothing_*")


def test_layer_out_of_range() -> None:
    sm = SiteMap(get_model("tiny:llama").model)
    with pytest.raises(LayerOutOfRangeError, match="2 layers"):
        sm.get("resid_post.5")
    with pytest.raises(LayerOutOfRangeError):
        sm.resolve("resid_post.-3")


def test_discovery_maps_an_unknown_family() -> None:
    model = get_model("tiny:llama").model
    adapter = discover(model)
    sm = SiteMap(model, adapter)
    assert "resid_post.1" in sm and "mlp_out.0" in sm
    assert "q_in.0" in sm and "resid_mid.1" in sm and "mlp_gate.0" in sm


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("C", (), {"model_type": "odd"})()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2))])


def test_discovery_error_lists_modules() -> None:
    with pytest.raises(UnsupportedFamilyError, match="modules are: 0"):
        discover(_Odd())


def test_fused_gate_slice_is_first_half() -> None:
    lm = get_model("tiny:phi3")
    sm = SiteMap(lm.model)
    site = sm.get("mlp_gate.0")
    assert site.part == (0, 2)
    assert torch.is_tensor(lm.model.model.layers[0].mlp.gate_up_proj.weight)


def test_drop_removes_sites_and_what_derives_from_them() -> None:
    sm = SiteMap(get_model("tiny:gpt_neox").model)  # parallel residual: resid_mid is derived
    assert sm.get("resid_mid.0").mode == "derived"
    sm.drop({"attn_out.0": "fails resid_post = resid_pre + attn_out + mlp_out: max abs err 2"})
    assert "attn_out.0" not in sm and "resid_mid.0" not in sm and "resid_mid.1" in sm
    assert sm.dropped["resid_mid.0"] == "derived from attn_out.0, which was dropped"
    assert [s.name for s in sm.resolve("attn_out")] == ["attn_out.1"]
    with pytest.raises(UnknownSiteError, match="not offered on this model: fails resid_post"):
        sm.get("attn_out.0")
    assert sm.describe()["dropped_sites"] == sm.dropped


@pytest.mark.parametrize("family", ["granite", "cohere", "falcon_h1", "gemma2", "llama"])
def test_finish_logits_gives_the_model_logits_from_the_head_output(family: str) -> None:
    """lm_head(final_norm) x logits scale, then the soft-cap: the logits the model returns."""
    from actscope.capture import Trace, forward

    lm = get_model(f"tiny:{family}")
    sm = SiteMap(lm.model)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode(), Trace(lm, "final_norm", retain=True) as tr:
        logits = forward(lm.model, ids).logits
    head = lm.model.get_output_embeddings()
    with torch.inference_mode():
        got = sm.finish_logits(head(tr["final_norm"]))
    torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)
    assert (sm.logits_scale is not None) == (family in ("granite", "cohere", "falcon_h1"))
