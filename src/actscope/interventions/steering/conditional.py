"""Conditional activation steering (CAST): condition directions, threshold search, rules.

A :class:`Condition` reads the hidden state ``h`` at one site, averaged over the tokens of the
user message (real tokens after the first ``prefix_tokens`` and, at prefill, before the last
``suffix_tokens`` of the prompt: the fixed text a chat template puts around the message), and
computes a score against its direction ``c``:

* ``proj_cos`` (the CAST definition): the cosine between ``h`` and its projection on ``c``,
  ``cos(h, (h . c_hat) c_hat) = |h . c_hat| / |h|``;
* ``cos``: the signed cosine ``h . c_hat / |h|``.

It fires when ``score > threshold`` (comparator ``>``) or ``score < threshold`` (``<``).
By default the decision is taken once per sample on the prompt (latched at prefill); with
``per_token=True`` it is re-evaluated at every token on the running mean of the hidden states
of the message and every later token. Conditions combine with ``|``, ``&`` and ``~`` into
rules (``(food | sport)`` fires when either does).

:func:`search_condition` finds a condition on labelled prompts: per layer, the direction is
extracted on a training split, then every threshold between consecutive training scores and
both comparators are tried. The (layer, score, comparator) is chosen by cross-validated F1 on
the training split (5 stratified folds: direction and threshold refitted on four, predictions
pooled over the held-out folds), which resists the overfitting of a pick by training F1 when
dozens of layers separate a small training set perfectly; it is refitted on the whole training
split and reported with F1 and ROC AUC on the held-out split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from actscope.capture import sitemap_of
from actscope.errors import ActscopeError, DataError
from actscope.interventions.steering.datasets import ContrastDataset
from actscope.interventions.steering.encoding import Read, tokenize
from actscope.interventions.steering.extract import collect, layer_vector, resolve_layers
from actscope.interventions.steering.vector import SteeringVector

SCORES = ("proj_cos", "cos")
COMPARATORS = (">", "<")
Lookup = Callable[["Condition"], Tensor]


class Expr(ABC):
    """A boolean combination of conditions, evaluated to a gate per sample (or per token)."""

    @abstractmethod
    def leaves(self) -> list[Condition]:
        """The conditions this expression reads."""

    @abstractmethod
    def evaluate(self, lookup: Lookup) -> Tensor:
        """The combined boolean gate; ``lookup(leaf)`` gives each leaf's (B, 1) or (B, T) gate."""

    def __or__(self, other: Expr) -> Expr:
        return AnyOf((self, other))

    def __and__(self, other: Expr) -> Expr:
        return AllOf((self, other))

    def __invert__(self) -> Expr:
        return NotOf(self)

    @abstractmethod
    def with_per_token(self, per_token: bool) -> Expr:
        """The same expression with every leaf's ``per_token`` set to ``per_token``."""


@dataclass(frozen=True, eq=False)
class _Junction(Expr):
    """Parts combined elementwise by :meth:`join` (``|`` for AnyOf, ``&`` for AllOf)."""

    parts: tuple[Expr, ...]

    @staticmethod
    @abstractmethod
    def join(a: Tensor, b: Tensor) -> Tensor:
        """The two masks combined."""

    def leaves(self) -> list[Condition]:
        return [c for p in self.parts for c in p.leaves()]

    def evaluate(self, lookup: Lookup) -> Tensor:
        out = self.parts[0].evaluate(lookup)
        for p in self.parts[1:]:
            out = self.join(out, p.evaluate(lookup))
        return out

    def with_per_token(self, per_token: bool) -> Expr:
        return type(self)(tuple(p.with_per_token(per_token) for p in self.parts))


@dataclass(frozen=True, eq=False)
class AnyOf(_Junction):
    """Fires when any part fires."""

    @staticmethod
    def join(a: Tensor, b: Tensor) -> Tensor:
        return a | b


@dataclass(frozen=True, eq=False)
class AllOf(_Junction):
    """Fires when every part fires."""

    @staticmethod
    def join(a: Tensor, b: Tensor) -> Tensor:
        return a & b


@dataclass(frozen=True, eq=False)
class NotOf(Expr):
    """Fires when its part does not."""

    part: Expr

    def leaves(self) -> list[Condition]:
        return self.part.leaves()

    def evaluate(self, lookup: Lookup) -> Tensor:
        return ~self.part.evaluate(lookup)

    def with_per_token(self, per_token: bool) -> Expr:
        return NotOf(self.part.with_per_token(per_token))


def any_of(*parts: Expr) -> Expr:
    """Rule part that fires when any of ``parts`` fires."""
    return AnyOf(tuple(parts))


def all_of(*parts: Expr) -> Expr:
    """Rule part that fires when all of ``parts`` fire."""
    return AllOf(tuple(parts))


@dataclass(eq=False)
class Condition(Expr):
    """One condition: direction ``c`` at ``site``, a score, a comparator and a threshold."""

    direction: Tensor
    site: str
    threshold: float
    comparator: str = ">"
    score: str = "proj_cos"
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    per_token: bool = False
    name: str = "condition"
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.comparator not in COMPARATORS:
            raise ActscopeError(f"comparator must be '>' or '<', got {self.comparator!r}")
        if self.score not in SCORES:
            raise ActscopeError(
                f"unknown condition score {self.score!r}; known: {', '.join(SCORES)}"
            )
        self.direction = self.direction.detach().to("cpu", torch.float32).reshape(-1)
        if float(self.direction.norm()) == 0.0:
            raise ActscopeError("a condition direction cannot be zero")

    def leaves(self) -> list[Condition]:
        return [self]

    def evaluate(self, lookup: Lookup) -> Tensor:
        return lookup(self)

    def with_per_token(self, per_token: bool) -> Expr:
        return replace(self, per_token=per_token)

    def scores(self, h: Tensor, unit: Tensor | None = None) -> Tensor:
        """Score of hidden states ``h`` (..., D) in float32 (see module doc)."""
        u = self.direction / self.direction.norm() if unit is None else unit
        hf = h.float()
        dot = hf @ u.to(hf.device)
        norm = hf.norm(dim=-1).clamp_min(1e-12)
        return (dot.abs() if self.score == "proj_cos" else dot) / norm

    def fires(self, score: Tensor) -> Tensor:
        """Boolean: ``score > threshold`` or ``score < threshold``."""
        return score > self.threshold if self.comparator == ">" else score < self.threshold

    @property
    def read(self) -> Read:
        """The read position that averages exactly the tokens the gate averages at prefill."""
        return Read("trim", (self.prefix_tokens, self.suffix_tokens))

    # storage ----------------------------------------------------------------------------------
    def to_vector(self) -> SteeringVector:
        kind, layer = self.site.rsplit(".", 1)
        return SteeringVector(
            {int(layer): self.direction},
            site=kind,
            kind="condition",
            method="condition",
            read=str(self.read),
            meta={
                "threshold": self.threshold,
                "comparator": self.comparator,
                "score": self.score,
                "prefix_tokens": self.prefix_tokens,
                "suffix_tokens": self.suffix_tokens,
                "per_token": self.per_token,
                "name": self.name,
                "metrics": self.metrics,
            },
        )

    def save(self, path: str | Path, **provenance: Any) -> Path:
        """Write as a steering-vector file of kind ``condition`` (threshold etc. in ``meta``)."""
        vec = self.to_vector()
        for k, v in provenance.items():
            setattr(vec, k, v)
        return vec.save(path)

    @classmethod
    def from_vector(cls, vec: SteeringVector) -> Condition:
        if vec.kind != "condition" or len(vec.layers) != 1:
            raise DataError("not a condition file (kind must be 'condition' with one layer)")
        m = vec.meta
        layer = vec.layers[0]
        try:
            return cls(
                vec[layer],
                f"{vec.site}.{layer}",
                float(m["threshold"]),
                m.get("comparator", ">"),
                m.get("score", "proj_cos"),
                int(m.get("prefix_tokens", 0)),
                int(m.get("suffix_tokens", 0)),
                bool(m.get("per_token", False)),
                m.get("name", "condition"),
                dict(m.get("metrics", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed condition header ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> Condition:
        return cls.from_vector(SteeringVector.load(path))


# search ---------------------------------------------------------------------------------------
@dataclass
class ConditionSearch:
    """Result of :func:`search_condition`: the chosen condition and the full grid table."""

    condition: Condition
    table: pd.DataFrame
    test: dict[str, float]


def f1_score(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(F1, precision, recall) of boolean predictions against 0/1 labels (0 when undefined)."""
    tp = float((pred & (labels == 1)).sum())
    fp = float((pred & (labels == 0)).sum())
    fn = float((~pred & (labels == 1)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return f1, prec, rec


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counting 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _thresholds(scores: np.ndarray, limit: int) -> np.ndarray:
    """Midpoints between consecutive distinct scores (at most ``limit``, by quantiles)."""
    u = np.unique(scores)
    mids = (u[1:] + u[:-1]) / 2 if len(u) > 1 else u
    cands = np.concatenate([[u[0] - 1e-6], mids, [u[-1] + 1e-6]])
    if len(cands) > limit:
        cands = np.quantile(cands, np.linspace(0, 1, limit))
    return cands


def template_margins(lm: Any, texts: Sequence[Any]) -> tuple[int, int]:
    """The most common (tokens before, tokens after) the read span of ``texts``."""
    counts: dict[tuple[int, int], int] = {}
    for t in tokenize(lm.tokenizer, texts):
        flags = t.in_span
        first = flags.index(True)
        last = len(flags) - 1 - flags[::-1].index(True)
        key = (first, len(flags) - 1 - last)
        counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda k: counts[k])


def _fit_threshold(
    scores: np.ndarray, labels: np.ndarray, cmp: str, limit: int
) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > t`` (``<`` for comparator ``<``)."""
    sign = 1.0 if cmp == ">" else -1.0
    cands = _thresholds(scores, limit)
    f1s = [f1_score(sign * scores > sign * t, labels)[0] for t in cands]
    k = int(np.argmax(f1s))
    return float(cands[k]), f1s[k]


def _direction(acts: Tensor, labels: np.ndarray, method: str) -> Tensor:
    pos, neg = acts[torch.as_tensor(labels == 1)], acts[torch.as_tensor(labels == 0)]
    return layer_vector(pos, neg, method, paired=False, n_bootstrap=0)[0]


def _folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold index of every example (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for lab in (0, 1):
        idx = np.flatnonzero(labels == lab)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


def _cv(
    acts: Tensor, y: np.ndarray, folds: np.ndarray, method: str, kind: str, cmp: str, limit: int
) -> tuple[float, float]:
    """Pooled F1 of held-out-fold predictions and mean fold ROC AUC (direction, threshold and
    comparator's threshold refitted on the other folds)."""
    pred = np.zeros(len(y), dtype=bool)
    aucs = []
    sign = 1.0 if cmp == ">" else -1.0
    for f in np.unique(folds):
        fit, held = folds != f, folds == f
        probe = Condition(
            _direction(acts[torch.as_tensor(fit)], y[fit], method), "x.0", 0.0, ">", kind
        )
        sc = probe.scores(acts).numpy()
        t, _ = _fit_threshold(sc[fit], y[fit], cmp, limit)
        pred[held] = sign * sc[held] > sign * t
        auc = roc_auc(sign * sc[held], y[held])
        if auc == auc:
            aucs.append(auc)
    return f1_score(pred, y)[0], float(np.mean(aucs)) if aucs else float("nan")


def search_condition(
    lm: Any,
    dataset: ContrastDataset,
    *,
    site: str = "resid_post",
    layers: str | Sequence[int] | None = None,
    method: str = "mean_diff",
    scores: Sequence[str] = ("proj_cos",),
    comparators: Sequence[str] = COMPARATORS,
    train_fraction: float = 0.5,
    cv_folds: int = 5,
    seed: int = 0,
    n_thresholds: int = 200,
    batch_size: int = 16,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConditionSearch:
    """Grid search over layers x thresholds x comparators (x score kinds), see module doc.

    The (layer, score, comparator) is chosen by ``cv_folds``-fold cross-validated F1 on the
    training split (ties: cross-validated AUC, training F1, earlier layer); with
    ``cv_folds < 2``, by training F1. Its direction and threshold are then refitted on the
    whole training split and evaluated once on the held-out split.
    """
    if dataset.kind != "unpaired":
        raise DataError("a condition is found on labelled prompts (an unpaired dataset)")
    train, test = dataset.split(train_fraction, seed)
    lay = resolve_layers(lm, layers)
    sm = sitemap_of(lm)
    sites = [sm.get(f"{site}.{x}").name for x in lay]
    tr_texts, tr_lab = train.labelled(lm.tokenizer)
    te_texts, te_lab = test.labelled(lm.tokenizer)
    prefix, suffix = template_margins(lm, tr_texts)
    read = Read("trim", (prefix, suffix))
    acts_tr = collect(lm, tr_texts, sites, read, batch_size=batch_size, progress=progress)
    acts_te = collect(lm, te_texts, sites, read, batch_size=batch_size, progress=progress)
    y_tr, y_te = np.asarray(tr_lab), np.asarray(te_lab)
    folds = _folds(y_tr, cv_folds, seed) if cv_folds >= 2 else None
    rows: list[dict[str, Any]] = []
    best: tuple[tuple[float, ...], Condition] | None = None
    for x, s in zip(lay, sites, strict=True):
        vec = _direction(acts_tr[s], y_tr, method)
        for kind in scores:
            probe = Condition(vec, s, 0.0, ">", kind, prefix, suffix)
            sc_tr = probe.scores(acts_tr[s]).numpy()
            sc_te = probe.scores(acts_te[s]).numpy()
            for cmp in comparators:
                sign = 1.0 if cmp == ">" else -1.0
                thr, f1_tr = _fit_threshold(sc_tr, y_tr, cmp, n_thresholds)
                cond = Condition(vec, s, thr, cmp, kind, prefix, suffix, name=name or dataset.name)
                auc_tr = roc_auc(sign * sc_tr, y_tr)
                cv_f1, cv_auc = (
                    _cv(acts_tr[s], y_tr, folds, method, kind, cmp, n_thresholds)
                    if folds is not None
                    else (f1_tr, auc_tr)
                )
                f1_te, p_te, r_te = f1_score(cond.fires(torch.as_tensor(sc_te)).numpy(), y_te)
                rows.append(
                    {
                        "layer": x,
                        "site": s,
                        "score": kind,
                        "comparator": cmp,
                        "threshold": thr,
                        "train_f1": f1_tr,
                        "train_auc": auc_tr,
                        "cv_f1": cv_f1,
                        "cv_auc": cv_auc,
                        "test_f1": f1_te,
                        "test_precision": p_te,
                        "test_recall": r_te,
                        "test_auc": roc_auc(sign * sc_te, y_te),
                    }
                )
                key = (cv_f1, cv_auc, f1_tr, -x)
                if best is None or key > best[0]:
                    best = (key, cond)
    assert best is not None
    chosen = best[1]
    table = pd.DataFrame(rows)
    hit = table[
        (table.site == chosen.site)
        & (table.comparator == chosen.comparator)
        & (table.score == chosen.score)
    ].iloc[0]
    keys = (
        "train_f1",
        "train_auc",
        "cv_f1",
        "cv_auc",
        "test_f1",
        "test_precision",
        "test_recall",
        "test_auc",
    )
    test = {k: float(hit[k]) for k in keys}
    test.update(n_train=float(len(train)), n_test=float(len(te_lab)), n_test_pos=float(sum(te_lab)))
    chosen.metrics = dict(test)
    return ConditionSearch(chosen, table, test)
