"""Load-time verification of site meanings: identities, blame, drops, cache, bare HF models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers as tf
from tests._models import TINY_FAMILIES, get_model

from actscope.capture import Trace, forward, sitemap_of
from actscope.errors import UnknownSiteError, UnsupportedFamilyError
from actscope.models.tiny import VOCAB, build_tiny
from actscope.sites import Hook, SiteMap, adapter_for
from actscope.sites import verify as V
from actscope.sites.vocabulary import MIXER_OUT_KINDS

CORE = (
    "embed = resid_pre.0",
    "resid_mid = resid_pre + attn_out",
    "resid_post = resid_mid + mlp_out",
    "resid_post = resid_pre of the next layer",
    "logits = the model's logits",
)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_adapter_family_passes_and_keeps_every_site(family: str, dtype: str) -> None:
    sm = sitemap_of(get_model(f"tiny:{family}", dtype))
    res = sm.verification
    assert res.error is None and res.dropped == {} and sm.dropped == {}
    table = {r["identity"]: r for r in res.table()}
    derived = sm.get("resid_mid.0").mode == "derived"
    mixers = " + ".join(k for k in MIXER_OUT_KINDS if f"{k}.0" in sm)  # attn_out (+ ssm_out)
    for ident in CORE:
        if derived and "resid_mid" in ident:  # resid_mid is defined by that sum here
            ident = "resid_post = resid_pre + attn_out + mlp_out"
        ident = ident.replace("attn_out", mixers)
        assert table[ident]["status"] == "pass", (ident, table[ident])
    assert any(i.startswith("logits = ") and "final_norm" in i for i in table)
    assert all(c.status == "pass" for c in res.checks), [
        c for c in res.checks if c.status != "pass"
    ]


def _bad(adapter_changes: dict[str, Hook]) -> SiteMap:
    base = adapter_for("llama")
    assert base is not None
    bad = dataclasses.replace(base, layer_sites={**base.layer_sites, **adapter_changes})
    return SiteMap(build_tiny("llama"), bad)


def test_wrong_attn_out_is_dropped_with_its_identity_and_error() -> None:
    # attn_out mapped onto the residual after the addition: resid_mid = resid_pre + attn_out
    # fails, resid_post = resid_mid + mlp_out still holds, so attn_out alone is to blame.
    sm = _bad({"attn_out": Hook("post_attention_layernorm", "in")})
    res = V.verify_sitemap(sm.model, sm)
    assert set(res.dropped) == {"attn_out.0", "attn_out.1"}
    with pytest.warns(V.SiteDroppedWarning, match=r"attn_out.0, attn_out.1: fails resid_mid = "):
        V.apply_verification(sm, res)
    assert "resid_mid.0" in sm and "mlp_out.1" in sm and "attn_out.0" not in sm
    assert "max abs err" in sm.dropped["attn_out.0"]
    with pytest.raises(UnknownSiteError, match="not offered on this model: fails resid_mid"):
        sm.resolve("attn_out")
    with pytest.raises(UnknownSiteError, match="not offered"):
        sm.get("attn_out.1")


def test_wrong_resid_mid_is_blamed_when_the_branches_sum() -> None:
    # resid_mid mapped onto the MLP's input (normalised): both identities with resid_mid fail,
    # resid_post = resid_pre + attn_out + mlp_out holds, so the branches are kept.
    sm = _bad({"resid_mid": Hook("mlp", "in")})
    res = V.verify_sitemap(sm.model, sm)
    assert set(res.dropped) == {"resid_mid.0", "resid_mid.1"}


def _granite() -> torch.nn.Module:
    """Granite with a logits scaling of 4 and branches scaled by 0.5 outside any module."""
    torch.manual_seed(0)
    cfg = tf.GraniteConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logits_scaling=4.0,
        residual_multiplier=0.5,
    )
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def test_scaled_logits_and_branches_are_offered_with_their_scale() -> None:
    # Granite divides lm_head's output by logits_scaling and scales both residual branches by
    # residual_multiplier outside any module: the sites carry the factor and pass.
    model = _granite()
    sm = sitemap_of(model)
    res = sm.verification
    assert sm.dropped == {} and all(c.status == "pass" for c in res.checks)
    assert sm.get("logits").scale == 0.25 and sm.get("mlp_out.1").scale == 0.5
    fn = next(c for c in res.checks if c.site == "final_norm")
    assert fn.identity == "logits = lm_head(final_norm) x 1 / config.logits_scaling"
    assert any(c.identity == "logits = the model's logits" for c in res.checks)


def test_a_missing_scale_fails_logits_and_the_branches_but_not_final_norm() -> None:
    # The same Granite without the adapter's scales: the raw lm_head output is not the logits,
    # the raw branch outputs do not sum; final_norm still fits through the config's scaling.
    model = _granite()
    base = adapter_for("granite")
    assert base is not None
    plain = dataclasses.replace(
        base,
        layer_sites={**base.layer_sites, **adapter_for("llama").layer_sites},  # type: ignore[union-attr]
        logits_scale=None,
    )
    sm = SiteMap(model, plain)
    res = V.verify_sitemap(model, sm)
    assert "fails logits = the model's logits" in res.dropped["logits"]
    assert {"attn_out.0", "mlp_out.0"} <= set(res.dropped)
    assert "final_norm" not in res.dropped and "resid_post.0" not in res.dropped
    fn = next(c for c in res.checks if c.site == "final_norm")
    assert fn.status == "pass" and fn.identity == "logits = lm_head(final_norm) / logits_scaling"


def test_bloom_raw_module_output_is_caught() -> None:
    """BLOOM adds the residual inside attention: its raw output is not attn_out."""
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
    model = get_model("tiny:bloom").model
    res = V.verify_sitemap(model, SiteMap(model, raw))
    assert {"attn_out.0", "mlp_out.0"} <= set(res.dropped)


def test_moe_router_and_expert_sum_are_checked_and_blamed() -> None:
    model = get_model("tiny:qwen2_moe").model
    sm = SiteMap(model)
    res = V.verify_sitemap(model, sm)
    table = {r["identity"]: r for r in res.table()}
    assert table["router_logits = W mlp_in (+ b)"]["status"] == "pass"
    shared = "sum_e expert_out + sigmoid(shared_expert_gate mlp_in) shared_down_out = mlp_out"
    assert table[shared]["status"] == "pass" and table[shared]["n"] == sm.n_layers
    # Expert 0's output taken at its input: the expert sum fails and blames the experts only.
    bad = dataclasses.replace(sm.get("expert_out.0.0"), kind="expert_in")
    sm._sites["expert_out.0.0"] = bad
    res = V.verify_sitemap(model, sm)
    assert "expert_out.0.0" in res.dropped and "mlp_out.0" not in res.dropped
    assert "fails sum_e expert_out" in res.dropped["expert_out.0.0"]


def test_a_site_whose_hook_never_runs_is_dropped() -> None:
    base = adapter_for("llama")
    assert base is not None
    lost = dataclasses.replace(base, linears={**base.linears, "spare": "self_attn.spare"})
    model = build_tiny("llama")
    model.model.layers[0].self_attn.spare = torch.nn.Linear(2, 2)  # never called
    res = V.verify_sitemap(model, SiteMap(model, lost))
    assert res.dropped["spare_in.0"].startswith("produced no value on the probe")


def test_rel_error_is_per_token_relative() -> None:
    a = torch.tensor([[[100.0, 0.0], [1.0, 0.0]]])
    b = a.clone()
    b[0, 1, 0] = 1.5
    assert V.rel_error(a, b) == 0.5 / 1.5  # the small token is not hidden by the large one
    assert V.rel_error(a, a) == 0.0
    assert V.rel_error(a, a[..., :1]) == float("inf")


def test_probe_is_right_padded() -> None:
    ids, mask = V.probe_ids(build_tiny("llama"), None)
    assert ids.shape == mask.shape == (V.BATCH, V.SEQ)
    assert mask[0].all() and mask[1, -V.PAD :].sum() == 0 and int(ids.max()) < VOCAB


def test_nothing_usable_fails_in_one_line() -> None:
    sm = SiteMap(build_tiny("llama"))
    res = V.verify_sitemap(sm.model, sm)
    res.dropped = {n: "fails something: max abs err 1" for n in sm.names}
    with pytest.warns(V.SiteDroppedWarning), pytest.raises(UnsupportedFamilyError) as exc:
        V.apply_verification(sm, res)
    assert len(str(exc.value).splitlines()) == 1 and "no usable site" in str(exc.value)


def test_inplace_rewrites_are_found_on_falcon() -> None:
    sm = sitemap_of(_falcon())
    assert sm.dropped == {}
    assert {"mlp_out.0", "mlp_out.1"} <= set(sm.inplace or ())
    assert "resid_post.0" not in (sm.inplace or ())


def _falcon() -> torch.nn.Module:
    """Falcon-7B's layout: parallel attention, and the MLP output updated in place."""
    from actscope.models.tiny import build_tiny

    model = build_tiny("falcon")
    assert model.config.parallel_attn and not model.config.new_decoder_architecture
    return model


def test_cached_by_file_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTSCOPE_CACHE", str(tmp_path))
    model = build_tiny("llama")
    first = V.verified_sitemap(model, file_hash="ab" * 32)
    assert not first.verification.cached
    assert len(list((tmp_path / "verify").glob("*.json"))) == 1

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("verification repeated despite the cache")

    monkeypatch.setattr(V, "verify_sitemap", fail)
    again = V.verified_sitemap(model, file_hash="ab" * 32)
    assert again.verification.cached and again.verification.checks == first.verification.checks
    assert again.inplace == first.inplace and again.names == first.names
    with pytest.raises(AssertionError, match="repeated"):
        V.verified_sitemap(model)  # no file hash: verified each time


def test_bare_hf_model_is_accepted() -> None:
    model = build_tiny("llama")
    sm = sitemap_of(model)
    assert sm.model is model and sm.verification is not None and sm.dropped == {}
    ids = torch.tensor([[3, 4, 5]])
    with torch.inference_mode(), Trace(model, ["resid_post.1", "logits"], retain=True) as tr:
        out = forward(model, ids).logits
    assert torch.equal(tr["logits"], out) and tr["resid_post.1"].shape == (1, 3, 64)


def test_probe_failure_keeps_sites_unverified_with_a_warning() -> None:
    model = build_tiny("llama")
    sm = SiteMap(model)
    model.model.layers[0].mlp.forward = None  # type: ignore[assignment,method-assign]
    try:
        res = V.verify_sitemap(model, sm)
    finally:
        del model.model.layers[0].mlp.forward
    assert res.error is not None and res.dropped == {}
    with pytest.warns(V.SiteDroppedWarning, match="not verified"):
        V.apply_verification(sm, res)
    assert sm.inplace == frozenset(sm.names)


def test_a_16_bit_model_is_probed_in_float32_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny("gemma3", dtype=torch.bfloat16)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    before = {n: t.clone() for n, t in tensors}
    res = V.verify_sitemap(model, SiteMap(model))
    assert res.dtype == "float32" and res.tolerance == V.TOLERANCE[torch.float32]
    assert res.dropped == {} and all(c.status == "pass" for c in res.checks)
    for n, t in tensors:
        assert t.dtype == before[n].dtype and torch.equal(t, before[n]), n
    monkeypatch.setattr(V, "_free_bytes", lambda device: 0)  # no room for a float32 copy
    res = V.verify_sitemap(model, SiteMap(model))
    assert res.dtype == "bfloat16" and res.tolerance == V.TOLERANCE[torch.bfloat16]
    assert res.dropped == {}


def test_non_finite_values_are_not_blamed_on_the_sites() -> None:
    """An Inf in the final norm's weight makes final_norm and logits non-finite on every token:
    the identities cannot be judged there, so both sites stay (the profile then counts the
    non-finite values), while every other identity is still checked."""
    model = build_tiny("llama")
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    res = V.verify_sitemap(model, SiteMap(model))
    assert not res.dropped
    skipped = {c.site for c in res.checks if c.status == "skipped"}
    assert {"logits", "final_norm"} <= skipped
    assert any(c.status == "pass" and c.site.startswith("resid_post") for c in res.checks)
