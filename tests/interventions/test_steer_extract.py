"""Extraction: every method against a direct computation, read positions, padding invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests._models import get_model

from actscope.capture import Trace, forward
from actscope.errors import ActscopeError, DataError
from actscope.interventions.steering.apply import Steering
from actscope.interventions.steering.datasets import ContrastDataset, Text
from actscope.interventions.steering.encoding import Read, parse_read, tokenize
from actscope.interventions.steering.extract import (
    collect,
    layer_vector,
    resolve_layers,
    train_vector,
    unit_direction,
)


def _pairs(n: int = 24, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g) * 3
    shift = torch.zeros(d)
    shift[0], shift[1] = 2.0, -1.0
    noise = torch.randn(n, d, generator=g) * 0.7
    return base + shift + noise, base


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mean_diff_is_the_difference_of_means() -> None:
    pos, neg = _pairs()
    v, stats = layer_vector(pos, neg, "mean_diff", paired=True, n_bootstrap=0)
    torch.testing.assert_close(v, pos.mean(0) - neg.mean(0), atol=1e-5, rtol=1e-5)
    assert stats["norm"] == pytest.approx(float((pos.mean(0) - neg.mean(0)).norm()), rel=1e-5)
    d = (pos - neg).double().numpy()
    u = (v / v.norm()).double().numpy()
    assert stats["pair_agreement"] == pytest.approx(float(np.mean(d @ u > 0)))
    assert stats["explained_variance"] == pytest.approx(float(((d @ u) ** 2).sum() / (d**2).sum()))


def test_pca_pair_matches_the_top_eigenvector_of_plus_minus_half_differences() -> None:
    pos, neg = _pairs()
    d = (pos - neg).double().numpy()
    rows = np.concatenate([d / 2, -d / 2])
    w, vecs = np.linalg.eigh(rows.T @ rows)
    top = vecs[:, -1]
    if np.sum(d @ top > 0) < np.sum(d @ top < 0):
        top = -top
    v, stats = layer_vector(pos, neg, "pca_pair", paired=True, n_bootstrap=0)
    vn = v.double().numpy()
    assert _cos(vn, top) > 1 - 1e-6
    assert float(np.linalg.norm(vn)) == pytest.approx(abs(top @ d.mean(0)), rel=1e-5)
    assert stats["explained_variance"] == pytest.approx(w[-1] / w.sum(), rel=1e-6)


def test_pca_pair_keeps_the_mean_difference_that_centred_pca_of_differences_drops() -> None:
    g = torch.Generator().manual_seed(1)
    neg = torch.randn(10, 6, generator=g)
    delta = torch.tensor([1.0, 2.0, 0.0, 0.0, -1.0, 0.5])
    pos = neg + delta  # every pair differs by exactly delta: centred differences are all zero
    v, _ = layer_vector(pos, neg, "pca_pair", paired=True, n_bootstrap=0)
    torch.testing.assert_close(v, delta, atol=1e-5, rtol=1e-5)


def test_pca_pair_sign_follows_the_majority_of_pairs() -> None:
    neg = torch.zeros(5, 3)
    pos = neg.clone()
    pos[:, 0] = torch.tensor([1.0, 1.0, 1.0, -5.0, -5.0])  # 3 pairs up, mean difference down
    u = unit_direction(pos, neg, "pca_pair", paired=True)
    assert float(u[0]) > 0.999
    v, stats = layer_vector(pos, neg, "pca_pair", paired=True, n_bootstrap=0)
    assert float(v[0]) == pytest.approx(1.4, rel=1e-5)  # |u . delta| = 7/5
    assert stats["pair_agreement"] == pytest.approx(0.6)


def test_pca_center_matches_the_top_eigenvector_of_the_centred_pooled_data() -> None:
    pos, neg = _pairs(seed=3)
    x = torch.cat([pos, neg]).double().numpy()
    xc = x - x.mean(0)
    top = np.linalg.eigh(xc.T @ xc)[1][:, -1]
    delta = (pos.mean(0) - neg.mean(0)).double().numpy()
    if top @ delta < 0:
        top = -top
    v, _ = layer_vector(pos, neg, "pca_center", paired=False, n_bootstrap=0)
    assert _cos(v.double().numpy(), top) > 1 - 1e-6


def test_logistic_matches_a_direct_minimisation_of_the_regularised_loss() -> None:
    pos, neg = _pairs(n=30, d=6, seed=4)
    d = (pos - neg).double()
    x = torch.cat([d / 2, -d / 2])
    y = torch.cat([torch.ones(30), -torch.ones(30)]).double()
    w = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = 0.5 * (w @ w) + torch.nn.functional.softplus(-y * (x @ w)).sum()  # C = 1
        value.backward()
        return value

    opt.step(loss)
    v, _ = layer_vector(pos, neg, "logistic", paired=True, n_bootstrap=0)
    assert _cos(v.double().numpy(), w.detach().numpy()) > 1 - 1e-5


def test_unpaired_agreement_and_bootstrap_confidence() -> None:
    g = torch.Generator().manual_seed(5)
    pos = torch.randn(40, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)
    neg = torch.randn(25, 8, generator=g)
    v, stats = layer_vector(pos, neg, "mean_diff", paired=False, n_bootstrap=50, seed=0)
    u = v / v.norm()
    mid = (pos.mean(0) + neg.mean(0)) / 2
    right = int(((pos - mid) @ u > 0).sum() + ((neg - mid) @ u < 0).sum())
    assert stats["pair_agreement"] == pytest.approx(right / 65)
    assert 0.9 < stats["bootstrap_cos_p05"] <= stats["bootstrap_cos_mean"] <= 1.0
    assert stats["pos_proj_mean"] > stats["neg_proj_mean"]
    with pytest.raises(ActscopeError, match="pca_pair needs paired"):
        layer_vector(pos, neg, "pca_pair", paired=False)


def test_read_positions_select_the_right_tokens() -> None:
    lm = get_model("tiny:llama")
    texts = [Text("hello world", (6, 11), True), Text("abcd", (0, 2), True)]
    rows = tokenize(lm.tokenizer, texts)
    acts = {}
    for spec in ("last", "answer", "mean", "indices:0,-1", "trim:1,1"):
        acts[spec] = collect(lm, texts, ["resid_post.1"], spec, batch_size=2)["resid_post.1"]
    with Trace(lm, "resid_post.1", retain=True) as tr:
        forward(lm.model, torch.tensor([list(rows[0].ids)]))
    h = tr["resid_post.1"][0].float()
    span = torch.tensor(rows[0].in_span)
    torch.testing.assert_close(acts["last"][0], h[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts["answer"][0], h[span].select(0, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts["mean"][0], h[span].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts["indices:0,-1"][0], (h[0] + h[-1]) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts["trim:1,1"][0], h[1:-1].mean(0), atol=1e-5, rtol=1e-5)
    assert parse_read("indices:2") == Read("indices", (2,))
    with pytest.raises(DataError, match="unknown read position"):
        parse_read("middle")
    with pytest.raises(DataError, match="outside a text"):
        collect(lm, texts, ["resid_post.1"], "indices:5")


@pytest.mark.parametrize("read", ["last", "answer", "mean", "indices:1,-2"])
def test_padding_side_and_batch_size_do_not_change_activations(read: str) -> None:
    lm = get_model("tiny:qwen3")
    texts = [
        Text("a much longer text with many bytes in it", (7, 13), True),
        Text("short", (0, 5), True),
        Text("medium sized text", (7, 12), True),
    ]
    sites = ["resid_pre.0", "resid_mid.1", "resid_post.1"]
    ref = collect(lm, texts, sites, read, batch_size=1)
    for side in ("left", "right"):
        got = collect(lm, texts, sites, read, batch_size=3, padding_side=side)
        for s in sites:
            torch.testing.assert_close(got[s], ref[s], atol=1e-5, rtol=1e-4)


def test_train_vector_records_provenance_and_statistics() -> None:
    lm = get_model("tiny:llama")
    ds = ContrastDataset.from_records(
        [
            {
                "question": f"Question {i}?\n(A) yes\n(B) no",
                "answer_matching_behavior": "(A)" if i % 2 else "(B)",
                "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
            }
            for i in range(8)
        ],
        name="toy-ab",
    )
    v = train_vector(lm, ds, site="resid_mid", layers=[1], method="pca_pair", n_bootstrap=10)
    assert v.layers == [1] and v.site == "resid_mid" and v.method == "pca_pair"
    assert v.model == "tiny:llama" and v.family == "llama" and v.read == "answer"
    assert v.dataset == "toy-ab" and v.dataset_hash == ds.hash
    for key in (
        "norm",
        "explained_variance",
        "pair_agreement",
        "bootstrap_cos_mean",
        "bootstrap_cos_p05",
    ):
        assert key in v.stats[1]
    # the answer-letter read of A/B items equals a direct collection at the letter token
    pos_t, neg_t = ds.texts(lm.tokenizer)
    pos = collect(lm, pos_t, ["resid_mid.1"], "last")["resid_mid.1"]
    neg = collect(lm, neg_t, ["resid_mid.1"], "last")["resid_mid.1"]
    direct, _ = layer_vector(pos, neg, "pca_pair", paired=True, n_bootstrap=0)
    torch.testing.assert_close(v[1], direct, atol=1e-5, rtol=1e-4)


def test_resolve_layers_forms() -> None:
    lm = get_model("tiny:llama")
    assert resolve_layers(lm, None) == [0, 1]
    assert resolve_layers(lm, "0-1") == [0, 1]
    assert resolve_layers(lm, "-1") == [1]
    assert resolve_layers(lm, [1, 0, 1]) == [0, 1]
    with pytest.raises(ActscopeError, match="out of range"):
        resolve_layers(lm, [2])


def test_sublayer_output_sites_train_vectors_that_steer_the_residual_stream() -> None:
    lm = get_model("tiny:llama")
    ds = ContrastDataset.from_records(
        [{"positive": f"good thing {i}", "negative": f"bad thing {i}"} for i in range(6)],
        name="toy",
    )
    v = train_vector(lm, ds, site="mlp_out", layers=[0], n_bootstrap=0)
    assert v.site == "mlp_out"
    ids = torch.tensor([[5, 6, 7, 8]])
    with Steering(lm, v, coef=2.0):  # resid_post.0 = resid_mid.0 + mlp_out.0
        at_mlp = forward(lm.model, ids).logits
    with Steering(lm, {0: v[0]}, site="resid_post", coef=2.0):
        at_resid = forward(lm.model, ids).logits
    torch.testing.assert_close(at_mlp, at_resid, atol=1e-5, rtol=1e-5)
    for site in ("q_out", "mlp_act", "logits"):
        with pytest.raises(ActscopeError, match="steering vectors live in the residual stream"):
            train_vector(lm, ds, site=site, layers=[0])
