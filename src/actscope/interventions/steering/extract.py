"""Extract steering directions from contrast activations.

Notation, per layer: positives ``x+_i`` and negatives ``x-_i`` (rows of (N, D) matrices), for
paired data the differences ``d_i = x+_i - x-_i``, class means ``mu+`` and ``mu-`` and
``delta = mu+ - mu-`` (for paired data ``delta = mean_i d_i``). Every method first finds a unit
direction ``u``; the vector is then ``v = u * |u . delta|``: its projection on the class
separation equals that of the mean difference, so multipliers mean the same across methods.

* ``mean_diff`` (CAA): ``u = delta / |delta|``, so ``v = delta``.
* ``pca_pair``: first principal axis of the 2N rows ``{+d_i/2, -d_i/2}`` (mean zero by
  construction, so no centring can remove the mean difference); sign chosen so that most pairs
  have ``d_i . u > 0`` (needs paired data).
* ``pca_center``: first principal axis of all activations ``{x+} U {x-}`` after subtracting
  their pooled mean; sign from the majority of pairs (paired) or ``u . delta > 0`` (unpaired).
* ``logistic``: L2-regularised logistic regression without intercept (C = 1) of labels +1 / -1
  on centred rows (``+-d_i/2`` for pairs, pooled-mean-centred activations otherwise);
  ``u = w / |w|``, sign so that ``u . delta > 0``.

Per-layer statistics: ``norm`` = |v|; ``explained_variance`` = the share of the rows' second
moment along ``u`` (rows ``+-d_i/2`` for pairs, pooled centred activations otherwise);
``pair_agreement`` = fraction of pairs with ``d_i . u > 0`` (unpaired: fraction of examples on
their class' side of the midpoint ``(mu+ + mu-)/2``); ``bootstrap_cos_mean`` /
``bootstrap_cos_p05`` = mean and 5th percentile of ``cos(u_b, u)`` over bootstrap resamples of
the pairs (per class when unpaired); ``pos_proj_mean`` / ``neg_proj_mean`` = mean ``x . u``;
``cos_mean_diff`` = ``cos(u, delta)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from actscope.capture import StopForward, Trace, forward, sitemap_of
from actscope.errors import ActscopeError, DataError
from actscope.interventions.steering.datasets import ContrastDataset, Text
from actscope.interventions.steering.encoding import (
    Read,
    batches,
    pad_id_of,
    parse_read,
    read_weights,
    tokenize,
)
from actscope.interventions.steering.vector import SteeringVector, check_site_kind

METHODS = ("mean_diff", "pca_pair", "pca_center", "logistic")


# activations ----------------------------------------------------------------------------------
def collect(
    lm: Any,
    texts: Sequence[Text],
    sites: Sequence[str],
    read: str | Read = "last",
    *,
    batch_size: int = 16,
    padding_side: str = "right",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Read activations of ``texts`` at ``sites``: ``{site: float32 (N, D)}`` on the CPU.

    Texts are run in length-sorted padded batches with mask-derived position ids and an early
    stop after the last requested layer; each row is the weighted sum ``sum_t w_t h_t`` with the
    read weights of :func:`~.encoding.read_weights` (padding has weight 0).
    """
    rd = parse_read(read)
    model = getattr(lm, "model", lm)
    sm = sitemap_of(lm)
    names = [s.name for s in sm.resolve(list(sites))]
    device = model.get_input_embeddings().weight.device
    rows = tokenize(lm.tokenizer, texts)
    out: dict[str, Tensor | None] = dict.fromkeys(names)
    box: dict[str, Tensor] = {}

    def consume(site: str, value: Tensor, mask: Tensor | None) -> None:
        box[site] = torch.einsum("bt,btd->bd", box["_w"], value.float())

    with torch.inference_mode(), Trace(sm, names, consumers=[consume], stop=True) as tr:
        for idx, enc in batches(rows, batch_size, padding_side, pad_id_of(lm.tokenizer)):
            enc = enc.to(device)
            box.clear()
            box["_w"] = read_weights(enc, rd)
            tr.set_mask(enc.attention_mask)
            with contextlib.suppress(StopForward):
                forward(model, enc.input_ids, enc.attention_mask)
            where = torch.tensor(idx)
            for name in names:
                got = box[name].cpu()
                if out[name] is None:
                    out[name] = torch.empty(len(rows), got.shape[-1])
                out[name][where] = got  # type: ignore[index]
            if progress is not None:
                progress(len(idx))
    return {k: v for k, v in out.items() if v is not None}


# directions -----------------------------------------------------------------------------------
def _top_axis(rows: Tensor) -> tuple[Tensor, float]:
    """First right singular vector of ``rows`` and its share of the squared singular values."""
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    return vh[0], float(s[0] ** 2 / (s**2).sum()) if float((s**2).sum()) > 0 else 0.0


def _majority_sign(u: Tensor, diffs: Tensor, delta: Tensor) -> Tensor:
    """Flip ``u`` so that most pairs project positively (ties broken by ``delta``)."""
    votes = int((diffs @ u > 0).sum()) - int((diffs @ u < 0).sum())
    if votes < 0 or (votes == 0 and float(delta @ u) < 0):
        return -u
    return u


def _logistic_axis(rows: Tensor, labels: Tensor) -> Tensor:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(fit_intercept=False, C=1.0, max_iter=2000, tol=1e-8)
    clf.fit(rows.numpy(), labels.numpy())
    return torch.tensor(clf.coef_[0], dtype=rows.dtype)


def unit_direction(pos: Tensor, neg: Tensor, method: str, paired: bool) -> Tensor:
    """Unit direction ``u`` of ``method`` (float64), with the sign convention of the module doc."""
    pos, neg = pos.double(), neg.double()
    delta = pos.mean(0) - neg.mean(0)
    if method == "mean_diff":
        n = delta.norm()
        if float(n) == 0.0:
            raise ActscopeError("positives and negatives have the same mean: no direction")
        return delta / n
    if method == "pca_pair":
        if not paired:
            raise ActscopeError("pca_pair needs paired data (pairs or A/B items)")
        d = pos - neg
        u, _ = _top_axis(torch.cat([d / 2, -d / 2]))
        return _majority_sign(u, d, delta)
    if method == "pca_center":
        pooled = torch.cat([pos, neg])
        u, _ = _top_axis(pooled - pooled.mean(0))
        if paired:
            return _majority_sign(u, pos - neg, delta)
        return -u if float(delta @ u) < 0 else u
    if method == "logistic":
        rows, labels = _centred_rows(pos, neg, paired)
        w = _logistic_axis(rows, labels)
        u = w / w.norm()
        return -u if float(delta @ u) < 0 else u
    raise ActscopeError(f"unknown extraction method '{method}'; known: {', '.join(METHODS)}")


def _centred_rows(pos: Tensor, neg: Tensor, paired: bool) -> tuple[Tensor, Tensor]:
    if paired:
        d = pos - neg
        rows = torch.cat([d / 2, -d / 2])
    else:
        pooled = torch.cat([pos, neg])
        rows = pooled - pooled.mean(0)
    labels = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]).long()
    return rows, labels


def layer_vector(
    pos: Tensor, neg: Tensor, method: str, paired: bool, *, n_bootstrap: int = 100, seed: int = 0
) -> tuple[Tensor, dict[str, float]]:
    """The vector ``v = u |u . delta|`` of one layer and its statistics (see module doc)."""
    if paired and pos.shape != neg.shape:
        raise DataError(
            f"paired data needs as many positives as negatives ({len(pos)} vs {len(neg)})"
        )
    if len(pos) < 1 or len(neg) < 1:
        raise DataError("extraction needs at least one positive and one negative example")
    p64, n64 = pos.double(), neg.double()
    u = unit_direction(p64, n64, method, paired)
    delta = p64.mean(0) - n64.mean(0)
    v = u * float((u @ delta).abs())
    rows, _ = _centred_rows(p64, n64, paired)
    total = float((rows**2).sum())
    stats: dict[str, float] = {
        "norm": float(v.norm()),
        "explained_variance": float(((rows @ u) ** 2).sum()) / total if total > 0 else 0.0,
        "pair_agreement": _agreement(p64, n64, u, paired),
        "pos_proj_mean": float((p64 @ u).mean()),
        "neg_proj_mean": float((n64 @ u).mean()),
        "cos_mean_diff": float(u @ delta / delta.norm()) if float(delta.norm()) > 0 else 0.0,
        "n_pos": float(len(pos)),
        "n_neg": float(len(neg)),
    }
    stats.update(_bootstrap(p64, n64, u, method, paired, n_bootstrap, seed))
    return v.float(), stats


def _agreement(pos: Tensor, neg: Tensor, u: Tensor, paired: bool) -> float:
    if paired:
        return float(((pos - neg) @ u > 0).double().mean())
    mid = (pos.mean(0) + neg.mean(0)) / 2
    right = int(((pos - mid) @ u > 0).sum()) + int(((neg - mid) @ u < 0).sum())
    return right / (len(pos) + len(neg))


def _bootstrap(
    pos: Tensor, neg: Tensor, u: Tensor, method: str, paired: bool, n: int, seed: int
) -> dict[str, float]:
    if n <= 0:
        return {}
    gen = np.random.default_rng(seed)
    cos = []
    for _ in range(n):
        if paired:
            i = torch.as_tensor(gen.integers(0, len(pos), len(pos)))
            bp, bn = pos[i], neg[i]
        else:
            bp = pos[torch.as_tensor(gen.integers(0, len(pos), len(pos)))]
            bn = neg[torch.as_tensor(gen.integers(0, len(neg), len(neg)))]
        try:
            ub = unit_direction(bp, bn, method, paired)
        except ActscopeError:
            continue
        cos.append(float(ub @ u))
    if not cos:
        return {}
    arr = np.asarray(cos)
    return {
        "bootstrap_cos_mean": float(arr.mean()),
        "bootstrap_cos_p05": float(np.quantile(arr, 0.05)),
    }


# datasets -> vectors --------------------------------------------------------------------------
def default_read(dataset: ContrastDataset) -> str:
    """``answer`` (the A/B letter) for A/B items, ``mean`` over the read span otherwise."""
    return "answer" if dataset.kind == "ab" else "mean"


def resolve_layers(lm: Any, layers: str | Sequence[int] | None) -> list[int]:
    """``None``/``all`` -> every layer; ``"4-8"``, ``"3,5,-1"`` or a list -> those layers."""
    n = sitemap_of(lm).n_layers
    if layers is None or layers == "all":
        return list(range(n))
    if isinstance(layers, str):
        out: list[int] = []
        for part in layers.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            if sep:
                out += list(range(int(lo), int(hi) + 1))
            else:
                out.append(int(lo))
        layers = out
    res = []
    for x in layers:
        k = x + n if x < 0 else x
        if not 0 <= k < n:
            from actscope.errors import LayerOutOfRangeError

            raise LayerOutOfRangeError(f"layer {x} is out of range: the model has {n} layers")
        res.append(k)
    return sorted(dict.fromkeys(res))


def train_vector(
    lm: Any,
    dataset: ContrastDataset,
    *,
    site: str = "resid_post",
    layers: str | Sequence[int] | None = None,
    method: str = "mean_diff",
    read: str | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    n_bootstrap: int = 100,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SteeringVector:
    """Extract a steering vector from ``dataset`` at ``{site}.{layer}`` for every layer.

    Activations of all layers are collected in one batched pass per text (positives, then
    negatives); then :func:`layer_vector` runs per layer.
    """
    check_site_kind(site)
    if method not in METHODS:
        raise ActscopeError(f"unknown extraction method '{method}'; known: {', '.join(METHODS)}")
    if method == "pca_pair" and not dataset.paired:
        raise ActscopeError("pca_pair needs paired data (pairs or A/B items), got unpaired texts")
    lay = resolve_layers(lm, layers)
    sm = sitemap_of(lm)
    sites = [sm.get(f"{site}.{x}").name for x in lay]
    rd = read or default_read(dataset)
    pos_t, neg_t = dataset.texts(lm.tokenizer)
    kw = dict(batch_size=batch_size, padding_side=padding_side, progress=progress)
    pos = collect(lm, pos_t, sites, rd, **kw)  # type: ignore[arg-type]
    neg = collect(lm, neg_t, sites, rd, **kw)  # type: ignore[arg-type]
    dirs, stats = {}, {}
    for x, s in zip(lay, sites, strict=True):
        dirs[x], stats[x] = layer_vector(
            pos[s], neg[s], method, dataset.paired, n_bootstrap=n_bootstrap, seed=seed
        )
    return SteeringVector(
        dirs,
        site=site,
        model=getattr(lm, "name", ""),
        model_hash=getattr(lm, "file_hash", None),
        family=str(sm.config.model_type),
        method=method,
        read=str(parse_read(rd)),
        dataset=dataset.name,
        dataset_hash=dataset.hash,
        stats=stats,
        meta={
            "padding_side": padding_side,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "dataset_kind": dataset.kind,
            "n_records": len(dataset),
        },
    )
