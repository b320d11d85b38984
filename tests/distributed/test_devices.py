"""Models split by accelerate: what actscope's hooks receive, and that nothing changes.

Without a GPU there is only one real device, so the CPU test splits the model between
resident weights and weights offloaded to disk: accelerate then wraps every placed module's
``forward`` in an AlignDevicesHook that moves inputs and loads the offloaded layer's weights
(from the meta device) for the duration of its call. That is the same machinery that places
modules on several GPUs; the test checks that actscope's hooks compose with it (every site
bit-identical to the plain model, the site invariants hold, tensors delivered on the module's
execution device, the stores built from both byte-identical) and that removing actscope's hooks
leaves accelerate's in place. With a GPU the same checks run on a real CUDA/CPU split (and
CUDA/CUDA with two GPUs), where ``in`` sites arrive on the producer's device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.store._corpus import small_corpus

from actscope.capture import Trace, forward, sitemap_of
from actscope.distributed import dispatch, execution_device, input_device, load_dispatched
from actscope.errors import ActscopeError
from actscope.models import load_model
from actscope.store import ActivationStore, build_store

IDS = torch.tensor([[5, 17, 99, 3, 42, 7], [8, 9, 10, 11, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def _split_map(first: object, second: object) -> dict[str, object]:
    return {
        "model.embed_tokens": first,
        "model.rotary_emb": first,
        "model.layers.0": first,
        "model.layers.1": second,
        "model.norm": second,
        "lm_head": second,
    }


def _capture(lm: object) -> tuple[dict[str, torch.Tensor], dict[str, torch.device], torch.Tensor]:
    devices: dict[str, torch.device] = {}

    def where(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        devices[site] = value.device

    dev = input_device(lm)
    with torch.inference_mode(), Trace(lm, "all", consumers=[where], retain=True) as tr:
        tr.set_mask(MASK.to(dev))
        logits = forward(getattr(lm, "model", lm), IDS.to(dev), MASK.to(dev)).logits
    return dict(tr.retained), devices, logits


def _check_invariants(acts: dict[str, torch.Tensor], n_layers: int) -> None:
    cpu = {k: v.to("cpu") for k, v in acts.items()}
    assert torch.equal(cpu["embed"], cpu["resid_pre.0"])
    for i in range(n_layers):
        torch.testing.assert_close(
            cpu[f"resid_mid.{i}"], cpu[f"resid_pre.{i}"] + cpu[f"attn_out.{i}"]
        )
        torch.testing.assert_close(
            cpu[f"resid_post.{i}"], cpu[f"resid_mid.{i}"] + cpu[f"mlp_out.{i}"]
        )
        if i + 1 < n_layers:
            assert torch.equal(cpu[f"resid_post.{i}"], cpu[f"resid_pre.{i + 1}"])


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_disk_offloaded_split_delivers_identical_sites(tmp_path: Path) -> None:
    plain = load_model("tiny:llama", dtype="fp32", device="cpu")
    ref, _, ref_logits = _capture(plain)

    lm = load_model("tiny:llama", dtype="fp32", device="cpu")
    dispatch(lm, _split_map("cpu", "disk"), offload_dir=tmp_path / "offload", main_device="cpu")
    layer1 = lm.model.model.layers[1]
    assert layer1.mlp.down_proj.weight.device.type == "meta", "layer 1 must be offloaded"
    assert hasattr(layer1, "_hf_hook") and execution_device(layer1) == torch.device("cpu")
    hooks = _hooks(lm.model)

    acts, devices, logits = _capture(lm)
    assert torch.equal(logits, ref_logits)
    assert acts.keys() == ref.keys()
    for name, value in ref.items():
        assert torch.equal(acts[name], value), name
    _check_invariants(acts, 2)
    sm = sitemap_of(lm)
    for site in sm.resolve("all"):
        if site.mode == "out":
            assert devices[site.name] == execution_device(sm.module(site)), site.name
    # actscope removed exactly its own hooks: accelerate's wrappers and offloading remain
    assert _hooks(lm.model) == hooks and hasattr(layer1, "_hf_hook")
    assert layer1.mlp.down_proj.weight.device.type == "meta"


def test_store_of_a_split_model_is_byte_identical(tmp_path: Path) -> None:
    def store(lm: object, out: Path) -> ActivationStore:
        sites = ["resid_post", "mlp_in.1"]
        return ActivationStore(
            build_store(lm, small_corpus(), sites, out, max_tokens=600, seq_len=32, shard_mb=0.05)
        )

    a = store(load_model("tiny:llama", dtype="fp32", device="cpu"), tmp_path / "a")
    lm = load_dispatched(
        "tiny:llama", dtype="fp32", device_map=_split_map("cpu", "disk"), offload_dir=tmp_path / "o"
    )
    assert lm.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    b = store(lm, tmp_path / "b")
    assert a.n_shards > 1
    assert [s["sha256"] for s in a.manifest["shards"]] == [
        s["sha256"] for s in b.manifest["shards"]
    ]


def test_bad_device_maps_are_refused() -> None:
    lm = load_model("tiny:llama", dtype="fp32", device="cpu")
    with pytest.raises(ActscopeError, match="offload_dir"):
        dispatch(lm, _split_map("cpu", "disk"))
    with pytest.raises(ActscopeError, match="'auto' or a mapping"):
        dispatch(lm, "balanced")


def _gpu_splits() -> list[tuple[object, object]]:
    n = torch.cuda.device_count()
    return [(0, "cpu")] + ([(0, 1)] if n >= 2 else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("first", "second"), _gpu_splits() if torch.cuda.is_available() else [])
def test_real_device_split_delivers_tensors_where_computed(first: object, second: object) -> None:
    plain = load_model("tiny:llama", dtype="fp32", device="cpu")
    ref, _, ref_logits = _capture(plain)
    lm = load_model("tiny:llama", dtype="fp32", device="cpu")
    dispatch(lm, _split_map(first, second), main_device="cpu" if second == "cpu" else None)
    d0 = execution_device(lm.model.model.layers[0])
    d1 = execution_device(lm.model.model.layers[1])
    assert d0 != d1
    acts, devices, logits = _capture(lm)
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=1e-4, atol=1e-4)
    for name, value in ref.items():
        torch.testing.assert_close(acts[name].cpu(), value, rtol=1e-4, atol=1e-4)
    _check_invariants(acts, 2)
    assert devices["resid_post.0"] == d0 and devices["mlp_out.1"] == d1
    assert devices["resid_post.1"] == d1 and devices["logits"] == d1
    # layer 1's input was computed by layer 0: delivered there, before accelerate moves it
    assert devices["resid_pre.1"] == d0
