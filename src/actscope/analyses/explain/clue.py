"""CLUE-style verification: nearest-centroid scoring of hidden-state deltas.

Each answer is summarised by its per-layer hidden-state delta D (layers x d, see
:mod:`~actscope.analyses.explain.answers`). From labelled past answers, the success and
failure centroids are the means ``mu_s = mean(D | correct)`` and ``mu_f = mean(D | wrong)``.
A new answer's score is

    score(D) = ||D - mu_f|| - ||D - mu_s||     (Frobenius norms; higher = more likely correct)

There are no trainable parameters beyond the two means. Scores are cross-validated: each
answer is scored by centroids built from the other folds only. Quality is the AUROC of the
score for telling correct from wrong answers, next to the AUROC of the model's own
confidence (mean token log-probability) on the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from actscope.errors import DataError


def centroids(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(success centroid, failure centroid) of flattened deltas ``x`` (n, f), labels ``y``."""
    if y.all() or not y.any():
        raise DataError("CLUE needs both correct and wrong past answers to build centroids")
    return x[y].mean(0), x[~y].mean(0)


def score(x: np.ndarray, mu_s: np.ndarray, mu_f: np.ndarray) -> np.ndarray:
    """``||x - mu_f|| - ||x - mu_s||`` per row."""
    return np.linalg.norm(x - mu_f, axis=1) - np.linalg.norm(x - mu_s, axis=1)


def cross_validated_scores(
    x: np.ndarray, y: Sequence[bool], folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out CLUE score of every row, and the fold it was held out in."""
    yb = np.asarray(y, dtype=bool)
    n_min = int(min(yb.sum(), (~yb).sum()))
    if n_min < 2:
        raise DataError(
            f"CLUE needs at least 2 correct and 2 wrong answers; got {int(yb.sum())} correct "
            f"and {int((~yb).sum())} wrong"
        )
    flat = x.reshape(len(x), -1)
    out = np.zeros(len(x))
    fold = np.zeros(len(x), dtype=int)
    split = StratifiedKFold(n_splits=min(folds, n_min), shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(split.split(flat, yb)):
        mu_s, mu_f = centroids(flat[tr], yb[tr])
        out[te] = score(flat[te], mu_s, mu_f)
        fold[te] = k
    return out, fold


def auroc(scores: np.ndarray, y: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``y`` (0.5 = chance)."""
    yb = np.asarray(y, dtype=bool)
    if yb.all() or not yb.any():
        return float("nan")
    return float(roc_auc_score(yb, scores))


def bootstrap_ci(
    scores: np.ndarray, y: Sequence[bool], n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (resampling answers with replacement)."""
    rng = np.random.default_rng(seed)
    yb = np.asarray(y, dtype=bool)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(yb), len(yb))
        if yb[idx].all() or not yb[idx].any():
            continue
        vals.append(roc_auc_score(yb[idx], scores[idx]))
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def per_layer_auroc(
    x: np.ndarray, y: Sequence[bool], folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Cross-validated CLUE AUROC using one layer's delta at a time: columns layer, auroc."""
    rows = []
    for layer in range(x.shape[1]):
        s, _ = cross_validated_scores(x[:, layer], y, folds, seed)
        rows.append({"layer": layer, "auroc": auroc(s, y)})
    return pd.DataFrame(rows)
