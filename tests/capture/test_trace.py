"""The capture engine: owned hooks, padding masks, early stop, edits, no memory growth."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch
from tests._models import get_model

from actscope.capture import StopForward, Trace, forward, run


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_even_when_forward_raises() -> None:
    lm = get_model("tiny:llama")
    before = _hook_count(lm.model)

    def boom(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"), Trace(lm, "all", consumers=[boom]):
        forward(lm.model, torch.tensor([[1, 2, 3]]))
    assert _hook_count(lm.model) == before


def test_foreign_hooks_are_left_alone() -> None:
    lm = get_model("tiny:llama")
    calls: list[int] = []
    handle = lm.model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with Trace(lm, "all", retain=True):
            forward(lm.model, torch.tensor([[1, 2, 3]]))
        forward(lm.model, torch.tensor([[1, 2, 3]]))
        assert len(calls) == 2, "actscope removed or disturbed a hook it did not register"
    finally:
        handle.remove()


def test_early_stop_skips_later_layers() -> None:
    lm = get_model("tiny:llama")
    calls: list[int] = []
    handle = lm.model.model.layers[1].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with Trace(lm, "resid_post.0", retain=True, stop=True) as tr:
            forward(lm.model, torch.tensor([[1, 2, 3]]))
            pytest.fail("the forward pass should have been stopped")  # pragma: no cover
        assert "resid_post.0" in tr and calls == []
        with Trace(lm, ["resid_post.0", "logits"], retain=True, stop=True) as tr:
            forward(lm.model, torch.tensor([[1, 2, 3]]))
        assert calls == [1] and "logits" in tr
    finally:
        handle.remove()
    assert StopForward is not None


def _collector(out: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    def collect(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        assert mask is not None
        out.append(mask)

    return collect


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "qwen3_moe"])
def test_left_and_right_padding_give_the_same_real_activations(family: str) -> None:
    lm = get_model(f"tiny:{family}")
    seqs = [[10, 11, 12, 13, 14, 15], [20, 21, 22]]
    pad = 0
    right = torch.tensor([s + [pad] * (6 - len(s)) for s in seqs])
    left = torch.tensor([[pad] * (6 - len(s)) + s for s in seqs])
    mright = (torch.arange(6) < torch.tensor([6, 3])[:, None]).long()
    mleft = mright.flip(-1)
    got = {}
    for name, ids, mask in (("right", right, mright), ("left", left, mleft)):
        masks: list[torch.Tensor] = []
        with (
            torch.inference_mode(),
            Trace(
                lm,
                ["resid_post.1", "logits"],
                retain=True,
                consumers=[_collector(masks)],
            ) as tr,
        ):
            tr.set_mask(mask)
            forward(lm.model, ids, mask)
        assert all(torch.equal(m, mask.bool()) for m in masks)
        got[name] = (tr["resid_post.1"], tr["logits"])
    alone = forward(lm.model, torch.tensor([seqs[1]])).logits
    for k in (0, 1):
        torch.testing.assert_close(got["right"][k][0], got["left"][k][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            got["right"][k][1, :3], got["left"][k][1, 3:], rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(got["left"][1][1, 3:], alone[0].detach(), rtol=1e-4, atol=1e-5)


def test_edit_changes_output_and_is_reversible() -> None:
    lm = get_model("tiny:llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        base = forward(lm.model, ids).logits
        with Trace(lm, edits={"mlp_out.0": lambda v, m: torch.zeros_like(v)}):
            edited = forward(lm.model, ids).logits
        after = forward(lm.model, ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(base, after)


def test_edit_on_observe_only_site_is_refused() -> None:
    from actscope.errors import ActscopeError

    lm = get_model("tiny:qwen3_moe")
    with (
        pytest.raises(ActscopeError, match="observe-only"),
        Trace(lm, edits={"router_logits.0": lambda v, m: v}),
    ):
        pass
    assert _hook_count(lm.model) == 0


def test_expert_site_mask_marks_routed_tokens() -> None:
    lm = get_model("tiny:qwen3_moe")
    masks: dict[str, torch.Tensor] = {}
    ids = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with (
        torch.inference_mode(),
        Trace(
            lm,
            ["expert_act.0.*", "router_logits.0"],
            retain=True,
            consumers=[lambda s, v, m: masks.__setitem__(s, m)],
        ) as tr,
    ):
        tr.set_mask(mask)
        forward(lm.model, ids, mask)
    routed = sum(masks[f"expert_act.0.{e}"].long() for e in range(4))
    assert torch.equal(routed, 2 * mask)  # top-2 routing: each real token in exactly 2 experts
    top2 = tr["router_logits.0"].topk(2, dim=-1).indices
    for e in range(4):
        assert torch.equal(masks[f"expert_act.0.{e}"], (top2 == e).any(-1) & mask.bool())


class _Batch:
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.input_ids, self.attention_mask = ids, mask

    def to(self, device: torch.device) -> _Batch:
        return self


def test_run_loop_counts_tokens_and_calls_batch_hooks() -> None:
    lm = get_model("tiny:llama")
    events: list[str] = []

    class Consumer:
        def begin_batch(self, b: _Batch) -> None:
            events.append("begin")

        def __call__(self, site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
            events.append(site)

        def end_batch(self, b: _Batch) -> None:
            events.append("end")

    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    info = run(lm, [_Batch(ids, mask)] * 2, ["resid_pre.1"], [Consumer()])
    assert info.tokens == 10 and info.batches == 2
    assert events == ["begin", "resid_pre.1", "end"] * 2


def test_repeated_runs_do_not_grow_memory() -> None:
    lm = get_model("tiny:llama")
    ids = torch.randint(0, 200, (4, 32))
    sink: list[float] = []

    def consumer(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        sink.append(0.0)
        sink.clear()

    def once() -> None:
        with torch.inference_mode(), Trace(lm, "all", consumers=[consumer], retain=True):
            forward(lm.model, ids)

    for _ in range(3):
        once()
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(30):
        once()
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    assert growth < 200_000, f"python heap grew by {growth} bytes over 30 traces"
    assert _hook_count(lm.model) == 0


def _falcon() -> torch.nn.Module:
    """Falcon-7B's layout: parallel attention, and the MLP output updated in place."""
    from actscope.models.tiny import build_tiny

    model = build_tiny("falcon")
    assert model.config.parallel_attn and not model.config.new_decoder_architecture
    return model


@pytest.mark.parametrize("verified", [True, False])
def test_captures_keep_the_value_at_hook_time_when_the_model_writes_in_place(
    verified: bool,
) -> None:
    from actscope.capture import sitemap_of
    from actscope.sites import SiteMap

    model = _falcon()
    sm = sitemap_of(model) if verified else SiteMap(model)  # unverified: retain still copies
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    held: dict[str, torch.Tensor] = {}

    def hold(site: str, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        held[site] = value  # kept past the hook, as the lens fit does

    with torch.inference_mode():
        base = forward(model, ids).logits
        consumers = [hold] if verified else []
        with Trace(sm, ["mlp_in.0", "mlp_out.0"], retain=True, consumers=consumers) as tr:
            forward(model, ids)
        mlp = model.transformer.h[0].mlp
        assert torch.equal(tr["mlp_out.0"], mlp(tr["mlp_in.0"]))
        if verified:
            assert torch.equal(held["mlp_out.0"], tr["mlp_out.0"])
        # patching the retained value back is a no-op
        with Trace(sm, edits={"mlp_out.0": lambda v, m: tr["mlp_out.0"]}):
            patched = forward(model, ids).logits
    assert torch.equal(patched, base)


def test_only_sites_rewritten_in_place_are_copied() -> None:
    from actscope.capture import sitemap_of
    from actscope.sites import SiteMap

    lm = get_model("tiny:llama")
    ids = torch.tensor([[1, 2, 3]])
    for sm, copied in ((sitemap_of(lm), False), (SiteMap(lm.model), True)):
        with torch.inference_mode(), Trace(sm, ["resid_post.0", "resid_pre.1"], retain=True) as tr:
            forward(lm.model, ids)
        assert torch.equal(tr["resid_post.0"], tr["resid_pre.1"])
        same = tr["resid_post.0"].data_ptr() == tr["resid_pre.1"].data_ptr()
        assert same != copied  # verified llama: no site is rewritten, nothing is copied


def test_a_mask_that_cannot_fit_a_site_raises() -> None:
    from actscope.errors import ActscopeError

    lm = get_model("tiny:llama")
    with (
        torch.inference_mode(),
        pytest.raises(ActscopeError, match="resid_post.0.*does not start with"),
        Trace(lm, "resid_post.0", consumers=[lambda s, v, m: None]) as tr,
    ):
        tr.set_mask(torch.ones(3, 4))
        forward(lm.model, torch.tensor([[1, 2, 3]]))
