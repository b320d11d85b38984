"""Application: modes against direct formulas, positions, per-sample steering, KV cache, hooks."""

from __future__ import annotations

import copy

import pytest
import torch
from tests._models import get_model

from actscope.capture import ForwardState, Handles, Trace, attach, forward, sitemap_of
from actscope.errors import ActscopeError
from actscope.interventions.steering.apply import Steering, Window, parse_positions
from actscope.interventions.steering.generate import encode_prompts, generate, instruction_window
from actscope.interventions.steering.vector import SteeringVector

PROMPTS = ["hello there", "a much longer prompt, with more bytes", "mid size"]


def _vec(
    lm: object, layers: tuple[int, ...] = (0,), scale: float = 1.0, seed: int = 0
) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    d = lm.model.config.hidden_size  # type: ignore[attr-defined]
    return SteeringVector({x: torch.randn(d, generator=g) * scale for x in layers}, model="tiny")


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _resid(
    lm: object, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Observed resid_post.0 and resid_pre.1 (the same tensor seen before and after edits)."""
    with Trace(lm, ["resid_pre.1"], retain=True) as tr:
        forward(lm.model, ids, mask)  # type: ignore[attr-defined]
    return {"after": tr["resid_pre.1"].float()}


def test_add_adds_the_vector_exactly_once() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    ids = torch.tensor([[5, 6, 7, 8]])
    base = _resid(lm, ids)["after"]
    with Steering(lm, v, coef=2.5):
        steered = _resid(lm, ids)["after"]
    torch.testing.assert_close(steered, base + 2.5 * v[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["ablate", "ablate_add", "clamp"])
def test_projection_modes_match_their_formulas(mode: str) -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, scale=0.3)
    u = v[0] / v[0].norm()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    h = _resid(lm, ids)["after"]
    with Steering(lm, v, coef=1.5, mode=mode):  # type: ignore[arg-type]
        got = _resid(lm, ids)["after"]
    proj = (h @ u)[..., None]
    expected = {
        "ablate": h - proj * u,
        "ablate_add": h - proj * u + 1.5 * v[0],
        "clamp": h + (1.5 * v[0].norm() - proj) * u,
    }[mode]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if mode == "ablate":
        assert float((got @ u).abs().max()) < 1e-5


def test_per_layer_and_per_sample_coefficients_and_vectors() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, layers=(0, 1))
    ids = torch.tensor([[5, 6, 7], [5, 6, 7]])
    base = forward(lm.model, ids).logits
    with Steering(lm, v, coef=[0.0, 3.0]):
        per_sample = forward(lm.model, ids).logits
    torch.testing.assert_close(per_sample[0], base[0])
    with Steering(lm, v, coef=3.0):
        full = forward(lm.model, ids).logits
    torch.testing.assert_close(per_sample[1], full[1], atol=1e-5, rtol=1e-5)
    with Steering(lm, v, coef={0: 3.0, 1: 0.0}):
        layer0 = forward(lm.model, ids).logits
    with Steering(lm, v, layers=[0], coef=3.0):
        only0 = forward(lm.model, ids).logits
    torch.testing.assert_close(layer0, only0, atol=1e-5, rtol=1e-5)
    w = _vec(lm, layers=(0, 1), seed=9)
    with Steering(lm, [v, w], coef=2.0):
        mixed = forward(lm.model, ids).logits
    with Steering(lm, w, coef=2.0):
        only_w = forward(lm.model, ids).logits
    torch.testing.assert_close(mixed[1], only_w[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ActscopeError, match="per-sample"), Steering(lm, v, coef=[1.0, 2.0, 3.0]):
        forward(lm.model, ids)


def test_positions_relative_to_the_prompt_end() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = _resid(lm, ids)["after"]
    for spec, steered_cols in (
        ("gen", [5]),
        ("prompt", [0, 1, 2, 3, 4, 5]),
        ("-2:", [3, 4, 5]),
        (Window(-4, -1), [1, 2, 3]),
        ("all", [0, 1, 2, 3, 4, 5]),
    ):
        with Steering(lm, v, coef=1.0, positions=spec):
            got = _resid(lm, ids)["after"]
        changed = [i for i in range(6) if not torch.allclose(got[0, i], base[0, i])]
        assert changed == steered_cols, spec
    with pytest.raises(ActscopeError, match="bad positions"):
        parse_positions("later")


def test_padding_is_not_steered_and_padding_side_does_not_matter() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    enc_l = encode_prompts(lm, PROMPTS, chat=False, side="left")
    enc_r = encode_prompts(lm, PROMPTS, chat=False, side="right")
    with Steering(lm, v, coef=2.0, positions="-3:"):
        left = _resid(lm, enc_l.input_ids, enc_l.attention_mask)["after"]
        right = _resid(lm, enc_r.input_ids, enc_r.attention_mask)["after"]
    base_l = _resid(lm, enc_l.input_ids, enc_l.attention_mask)["after"]
    pad = ~enc_l.attention_mask.bool()
    torch.testing.assert_close(left[pad], base_l[pad])  # padding untouched
    for i in range(len(PROMPTS)):
        a = left[i][enc_l.attention_mask[i].bool()]
        b = right[i][enc_r.attention_mask[i].bool()]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_hooks_are_owned_removed_and_steering_is_reversible() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, layers=(0, 1))
    ids = torch.tensor([[1, 2, 3]])
    before, base = _hooks(lm.model), forward(lm.model, ids).logits
    with pytest.raises(RuntimeError, match="boom"), Steering(lm, v, coef=5.0) as st:
        assert st.active and _hooks(lm.model) > before
        raise RuntimeError("boom")
    assert _hooks(lm.model) == before
    torch.testing.assert_close(forward(lm.model, ids).logits, base, atol=0, rtol=0)
    st = Steering(lm, v, coef=5.0).attach()
    assert not torch.allclose(forward(lm.model, ids).logits, base)
    st.remove()
    assert _hooks(lm.model) == before


def test_steerings_compose_with_each_other_and_with_trace_edits() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm)
    ids = torch.tensor([[4, 5, 6, 7]])
    with Steering(lm, v, coef=1.0), Steering(lm, v, coef=2.0):
        two = forward(lm.model, ids).logits
    with Steering(lm, v, coef=3.0):
        one = forward(lm.model, ids).logits
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)
    with Steering(lm, v, coef=3.0), Trace(lm, edits={"resid_post.1": lambda h, m: h * 0.5}):
        both = forward(lm.model, ids).logits
    with Trace(
        lm,
        edits={"resid_post.0": lambda h, m: h + 3.0 * v[0], "resid_post.1": lambda h, m: h * 0.5},
    ):
        manual = forward(lm.model, ids).logits
    torch.testing.assert_close(both, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("positions", ["all", "gen", "-2:3", "prompt"])
def test_generation_with_kv_cache_equals_generation_without(family: str, positions: str) -> None:
    lm = get_model(f"tiny:{family}")
    v = _vec(lm, layers=(0, 1), scale=0.5)
    st = Steering(lm, v, coef=[2.0, -1.0, 4.0], positions=positions)
    kw = dict(max_new_tokens=6, chat=False, output_scores=True, return_dict_in_generate=True)
    with_cache = _gen_scores(lm, st, use_cache=True, **kw)
    without = _gen_scores(lm, st, use_cache=False, **kw)
    assert torch.equal(with_cache[0], without[0])
    torch.testing.assert_close(with_cache[1], without[1], atol=1e-4, rtol=1e-4)
    plain = _gen_scores(lm, None, use_cache=True, **kw)
    assert not torch.allclose(plain[1], with_cache[1])


def _gen_scores(lm: object, st: Steering | None, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(generated ids, stacked scores) from model.generate with the steering attached."""
    enc = encode_prompts(lm, PROMPTS, chat=False)
    use_cache = bool(kw.pop("use_cache"))
    n = int(kw.pop("max_new_tokens"))  # type: ignore[call-overload]
    kw.pop("chat")
    ctx = st if st is not None else Steering(lm, {0: torch.zeros(lm.model.config.hidden_size)})  # type: ignore[attr-defined]
    with ctx, torch.inference_mode():
        ctx.set_prompt(enc.attention_mask)
        out = lm.model.generate(  # type: ignore[attr-defined]
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
            **kw,
        )
    return out.sequences, torch.stack(out.scores)


def test_first_generated_token_is_steered_with_gen_positions() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, layers=(0, 1), scale=2.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    base = forward(lm.model, ids).logits
    with Steering(lm, v, coef=3.0, positions="gen"):
        steered = forward(lm.model, ids).logits
    torch.testing.assert_close(steered[:, :-1], base[:, :-1])
    assert not torch.allclose(steered[:, -1], base[:, -1])


def test_generate_helper_runs_steering_in_batches_and_leaves_no_hooks() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, layers=(0, 1), scale=1.0)
    before = _hooks(lm.model)
    st = Steering(lm, v, coef=4.0, positions=instruction_window(lm))
    one = generate(lm, PROMPTS, st, max_new_tokens=5, batch_size=1)
    three = generate(lm, PROMPTS, st, max_new_tokens=5, batch_size=3)
    assert one == three
    assert generate(lm, PROMPTS, None, max_new_tokens=5) != one
    assert _hooks(lm.model) == before and not st.active
    assert instruction_window(lm) == Window(-11, None)  # "\nAssistant: " is 12 byte tokens


def _steered_real_tokens(
    lm: object, st: Steering, prompts: list[str], *, side: str, use_cache: bool, n: int
) -> tuple[list[list[bool]], list[list[int]]]:
    """Per prompt: whether each real token fed to the model was steered (in real-token order),
    and the generated ids. Seen directly: hooks registered before and after the steering's
    compare the steered site's value (``add`` changes exactly the gated tokens)."""
    enc = encode_prompts(lm, prompts, chat=False, side=side)
    b, width = enc.input_ids.shape
    sm = sitemap_of(lm)
    site = sm.get("resid_post.0")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    before, after, state = Handles(), Handles(), ForwardState()
    before.items += attach(sm, site, lambda h, m: seen.append((h.clone(), h)), state).items
    try:
        with st:
            after.items += attach(
                sm, site, lambda h, m: seen.append((seen.pop()[0], h)), state
            ).items
            st.set_prompt(enc.attention_mask)
            with torch.inference_mode():
                out = lm.model.generate(  # type: ignore[attr-defined]
                    input_ids=enc.input_ids,
                    attention_mask=enc.attention_mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=use_cache,
                    pad_token_id=0,
                )
    finally:
        before.remove()
        after.remove()
    assert len(seen) == n
    rows: list[dict[int, bool]] = [{} for _ in range(b)]
    for k, (pre, post) in enumerate(seen):
        t = pre.shape[1]  # the pass feeds the last t columns of a sequence of width + k
        full = torch.cat([enc.attention_mask.bool(), torch.ones(b, k, dtype=torch.bool)], 1)
        real = full[:, width + k - t : width + k]
        idx = full.long().cumsum(1)[:, width + k - t : width + k] - 1
        steered = (post != pre).any(-1)
        assert not steered[~real].any()  # padding is never steered
        for i in range(b):
            for j in real[i].nonzero()[:, 0].tolist():
                got = bool(steered[i, j])
                assert rows[i].setdefault(int(idx[i, j]), got) == got  # same in every pass
    bits = [[r[x] for x in sorted(r)] for r in rows]
    new = [out[i, width:].tolist() for i in range(b)]
    return bits, new


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_window_steers_the_same_tokens_alone_and_in_padded_batches(
    family: str, use_cache: bool
) -> None:
    lm = get_model(f"tiny:{family}")
    v = _vec(lm, layers=(0,), scale=1.0)
    st = Steering(lm, v, coef=4.0, positions="-3:4")
    n = 6
    alone = [
        _steered_real_tokens(lm, st, [p], side="left", use_cache=use_cache, n=n) for p in PROMPTS
    ]
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS]  # type: ignore[attr-defined]
    for i, (bits, _) in enumerate(alone):  # r = i - (L - 1) in [-3, 4)
        assert bits[0] == [lengths[i] - 4 <= x < lengths[i] + 3 for x in range(lengths[i] + n - 1)]
    for side in ("left", "right"):
        bits, new = _steered_real_tokens(lm, st, PROMPTS, side=side, use_cache=use_cache, n=n)
        assert bits == [a[0][0] for a in alone], side
        if side == "left":  # right-padded generation continues after the padding: other tokens
            assert new == [a[1][0] for a in alone]


def test_unpinned_cached_steps_continue_the_prompt_without_a_mask() -> None:
    lm = get_model("tiny:llama")
    v = _vec(lm, scale=2.0)
    ids, nxt = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9]])
    with torch.inference_mode():
        cache = lm.model(input_ids=ids, use_cache=True).past_key_values  # type: ignore[attr-defined]
        plain = lm.model(input_ids=nxt, past_key_values=copy.deepcopy(cache)).logits  # type: ignore[attr-defined]
        for spec, steered in (("prompt", False), ("gen", True), ("1:2", True), ("2:", False)):
            with Steering(lm, v, coef=3.0, positions=spec):
                lm.model(input_ids=ids, use_cache=True)  # type: ignore[attr-defined]
                got = lm.model(input_ids=nxt, past_key_values=copy.deepcopy(cache)).logits  # type: ignore[attr-defined]
            assert (not torch.equal(got, plain)) == steered, spec


def test_input_validation() -> None:
    lm = get_model("tiny:llama")
    with pytest.raises(ActscopeError, match="hidden size"):
        Steering(lm, {0: torch.zeros(7)})
    with pytest.raises(ActscopeError, match="unknown steering mode"):
        Steering(lm, _vec(lm), mode="multiply")  # type: ignore[arg-type]
    with pytest.raises(ActscopeError, match="no entry for layer"):
        Steering(lm, _vec(lm, layers=(0, 1)), coef={0: 1.0})
    moe = get_model("tiny:qwen2_moe")
    with pytest.raises(ActscopeError, match="observe-only"):
        Steering(moe, _vec(moe), site="router_logits")
