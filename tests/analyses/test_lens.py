"""Logit lens and tuned lens: last depth = model logits, exact recovery of planted maps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests._models import get_model

from actscope.analyses.explain.lens import (
    TunedLens,
    TunedLensFit,
    corpus_kl,
    depth_sites,
    fit_tuned_lens,
    lens_curves,
    lens_table,
    logit_lens,
    rms_normalise,
)
from actscope.analyses.explain.tokens import target_id
from actscope.capture import Trace, forward, sitemap_of
from actscope.errors import DataError
from actscope.models.tokens import token_texts


def _batches(n: int, seed: int) -> list[SimpleNamespace]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(4, 24, dtype=torch.long)
        mask[1, 18:] = 0  # some right padding
        ids = torch.randint(0, 256, (4, 24), generator=g)
        out.append(SimpleNamespace(input_ids=ids, attention_mask=mask))
    return out


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_last_depth_logit_lens_is_the_model_output(family: str) -> None:
    lm = get_model(f"tiny:{family}")
    sm = sitemap_of(lm)
    ids = torch.tensor([[5, 9, 60, 61, 62, 3]])
    with torch.inference_mode(), Trace(lm, depth_sites(sm), retain=True) as tr:
        logits = forward(lm.model, ids).logits.float()
    lens = logit_lens(sm, tr[f"resid_post.{sm.n_layers - 1}"])
    torch.testing.assert_close(lens, logits, atol=1e-4, rtol=1e-4)


def test_lens_table_ranks_and_probabilities() -> None:
    lm = get_model("tiny:llama")
    tok = lm.tokenizer
    prompts = ["hello world", "abc", "a much longer prompt than the others"]
    targets = ["x", "q", " "]
    with torch.inference_mode():
        finals = [
            forward(lm.model, torch.tensor([tok(p)["input_ids"]])).logits[0, -1].float()
            for p in prompts
        ]
    table = lens_table(lm, prompts, targets, batch_size=2)  # padded batches
    last = table[table["depth"] == table["depth"].max()].sort_values("prompt")
    for (_, row), f, t in zip(last.iterrows(), finals, targets, strict=True):
        tid = target_id(tok, t)
        assert row["target_rank"] == int((f > f[tid]).sum())
        assert row["target_prob"] == pytest.approx(float(torch.softmax(f, -1)[tid]), rel=1e-4)
        assert row["top_token"] == token_texts(tok, [int(f.argmax())])[0]
    assert last["kl_final"].abs().max() < 1e-4
    curves = lens_curves(table)
    assert list(curves["depth"]) == list(range(sitemap_of(lm).n_layers + 1))
    assert curves["mean_kl"].iloc[-1] == pytest.approx(0.0, abs=1e-4)


def test_fit_recovers_a_planted_affine_map() -> None:
    torch.manual_seed(0)
    d = 8
    w = torch.randn(d, d)
    b = torch.randn(d)
    fit = TunedLensFit(["a"], d, skip_first=0)
    for _ in range(5):
        h = torch.randn(2, 50, d) * 3
        u = rms_normalise(h) @ w + b
        fit("a", h, None)
        fit("final_norm", u, None)
    lens = fit.result(ridge=1e-9)
    torch.testing.assert_close(lens.weight[0], w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens.bias[0], b, atol=1e-4, rtol=1e-4)
    assert fit.tokens == 500


def test_fit_is_mergeable_across_batches() -> None:
    torch.manual_seed(1)
    h, u = torch.randn(1, 40, 6), torch.randn(1, 40, 6)
    whole = TunedLensFit(["a"], 6, skip_first=0)
    whole("a", h, None)
    whole("final_norm", u, None)
    parts = [TunedLensFit(["a"], 6, skip_first=0) for _ in range(2)]
    for p, sl in zip(parts, (slice(0, 25), slice(25, 40)), strict=True):
        p("a", h[:, sl], None)
        p("final_norm", u[:, sl], None)
    merged = parts[0].merge(parts[1])
    torch.testing.assert_close(merged.xtx, whole.xtx)
    torch.testing.assert_close(merged.result().weight, whole.result().weight)


def test_tuned_lens_beats_logit_lens_on_held_out_text(tmp_path: object) -> None:
    lm = get_model("tiny:llama")
    tuned, n = fit_tuned_lens(lm, _batches(6, seed=0))
    assert n == 6 * (4 * 23 - 6)  # real tokens minus the first position of each row
    kl = corpus_kl(lm, _batches(2, seed=1), tuned).pivot(
        index="depth", columns="lens", values="mean_kl"
    )
    assert (kl["tuned"].iloc[:-1] < kl["logit"].iloc[:-1]).all()
    assert kl["logit"].iloc[-1] == pytest.approx(0.0, abs=1e-5)
    assert kl["tuned"].iloc[-1] < 1e-3
    path = tuned.save(tmp_path / "lens.safetensors")  # type: ignore[operator]
    again = TunedLens.load(path)
    torch.testing.assert_close(again.weight, tuned.weight)
    assert again.sites == tuned.sites


def test_bad_lens_input() -> None:
    lm = get_model("tiny:llama")
    with pytest.raises(DataError, match="targets"):
        lens_table(lm, ["a", "b"], ["x"])
    with pytest.raises(DataError, match="no tokens"):
        TunedLensFit(["a"], 4).result()
    with pytest.raises(DataError, match="does not exist"):
        TunedLens.load("/nonexistent/lens.safetensors")


@pytest.mark.slow
def test_facts_become_decodable_with_depth_in_smollm2(smollm2: object) -> None:
    from actscope.analyses.explain.study_lens import load_prompts

    prompts, targets = load_prompts("facts", limit=8)
    curves = lens_curves(lens_table(smollm2, prompts, targets)).set_index("depth")
    assert curves["top1"].iloc[-1] >= 0.75
    assert curves["median_rank"].iloc[8] > 100 * max(curves["median_rank"].iloc[-1], 1)
    assert curves["mean_prob"].iloc[-1] > 5 * curves["mean_prob"].iloc[15]


def test_tuned_lens_files_are_checked_on_load_and_against_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    from actscope.analyses.explain.lens import TunedLens, depth_sites

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="cannot read tuned lens file"):
        TunedLens.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(DataError, match="is not a tuned lens file .*has tensors x"):
        TunedLens.load(other)
    bad = tmp_path / "bad.safetensors"
    TunedLens(torch.zeros(2, 4, 4), torch.zeros(3, 4), ["a", "b"]).save(bad)
    with pytest.raises(DataError, match="malformed tuned lens file"):
        TunedLens.load(bad)
    sm = sitemap_of(get_model("tiny:llama"))
    small = tmp_path / "small.safetensors"
    TunedLens(torch.zeros(2, 4, 4), torch.zeros(2, 4), ["a", "b"]).save(small)
    with pytest.raises(DataError, match="fitted on another model"):
        TunedLens.load(small).check_fits(sm)
    sites, d = depth_sites(sm), int(sm.config.hidden_size)
    TunedLens(torch.zeros(len(sites), d, d), torch.zeros(len(sites), d), sites).check_fits(sm)
