"""Per-layer linear probes with a control task (Hewitt & Liang 2019 selectivity).

For each site (one per depth by default: ``embed``, ``resid_post.0 .. L-1``) the feature of a
text is the site's vector at its last real token (``position="last"``) or the mean over its
real tokens (``"mean"``). A probe is an L2-regularised logistic regression on standardised
features, scored by k-fold stratified cross-validated accuracy.

The control task gives every *key* (by default the token at the probed position; for a
dataset, a field such as the entity a statement is about) a random label drawn from the
task's label distribution, and trains the same probe on those labels with the same folds. A
probe can only solve it by memorising keys, so

    selectivity = accuracy(task) - accuracy(control)

measures how much of the probe's accuracy is information about the task rather than the
probe's own capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from actscope.analyses.explain.tokens import encode, last_index, pad, pad_id
from actscope.capture import Trace, forward, sitemap_of
from actscope.errors import DataError

Position = Literal["last", "mean"]


def collect_features(
    lm: Any,
    texts: Sequence[str],
    sites: Sequence[str],
    position: Position = "last",
    batch_size: int = 16,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per site an (n_texts, width) float32 array of features; also each text's last token id."""
    if position not in ("last", "mean"):
        raise DataError(f"position must be 'last' or 'mean', not '{position}'")
    if not texts:
        raise DataError("no texts to probe")
    tok = lm.tokenizer
    feats: dict[str, list[np.ndarray]] = {s: [] for s in sites}
    last_tokens: list[int] = []
    for start in range(0, len(texts), batch_size):
        seqs = [encode(tok, t) for t in texts[start : start + batch_size]]
        ids, mask = pad(seqs, pad_id(tok), device=lm.device)
        last = last_index(mask)
        rr = torch.arange(len(seqs), device=lm.device)
        with torch.inference_mode(), Trace(lm, list(sites), retain=True, stop=True) as tr:
            tr.set_mask(mask)
            forward(lm.model, ids, mask)
        for s in sites:
            v = tr[s].float()
            if position == "last":
                f = v[rr, last]
            else:
                m = mask.unsqueeze(-1).float()
                f = (v * m).sum(1) / m.sum(1)
            feats[s].append(f.cpu().numpy())
        last_tokens += [s[-1] for s in seqs]
    return {s: np.concatenate(v) for s, v in feats.items()}, last_tokens


def control_labels(keys: Sequence[Any], labels: Sequence[Any], seed: int = 0) -> np.ndarray:
    """A random label per distinct key, drawn from the empirical distribution of ``labels``.

    Keys are sorted before drawing, so the assignment depends on the seed and the set of
    keys only, not on the order of the examples.
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    values, counts = np.unique(labels_arr, return_counts=True)
    distinct = sorted(set(map(str, keys)))
    drawn = rng.choice(values, size=len(distinct), p=counts / counts.sum())
    table = dict(zip(distinct, drawn, strict=True))
    return np.asarray([table[str(k)] for k in keys])


def cv_accuracy(
    x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, c: float = 1.0
) -> tuple[float, float]:
    """Mean and standard deviation over folds of a logistic probe's held-out accuracy.

    Folds are stratified by label (``min(folds, rarest label count)`` of them); when a label
    has a single example (a small control task can draw one), plain shuffled folds are used
    instead, and a training fold holding one label predicts that label.
    """
    if len(x) < 2:
        raise DataError("cross-validation needs at least 2 examples")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return 1.0, 0.0
    k = min(folds, int(counts.min()))
    if k >= 2:
        split: Any = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        split = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    accs = []
    for tr, te in split.split(x, y):
        if len(np.unique(y[tr])) < 2:
            pred = np.full(len(te), y[tr][0])
        else:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            pred = probe.fit(x[tr], y[tr]).predict(x[te])
        accs.append(float((pred == y[te]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def fit_probes(
    features: dict[str, np.ndarray],
    labels: Sequence[Any],
    control: Sequence[Any],
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
) -> pd.DataFrame:
    """One row per site: accuracy, control accuracy, selectivity and the majority baseline.

    Columns: site, depth (order given), accuracy, accuracy_std, control_accuracy,
    control_std, selectivity (= accuracy - control_accuracy), majority (share of the most
    frequent label: the accuracy of a constant guess), n.
    """
    y = np.asarray(labels)
    yc = np.asarray(control)
    if len(y) != len(yc):
        raise DataError("labels and control labels differ in length")
    majority = float(np.unique(y, return_counts=True)[1].max() / len(y))
    rows = []
    for k, (site, x) in enumerate(features.items()):
        if len(x) != len(y):
            raise DataError(f"site {site}: {len(x)} feature rows for {len(y)} labels")
        acc, sd = cv_accuracy(x, y, folds, seed, c)
        cacc, csd = cv_accuracy(x, yc, folds, seed, c)
        rows.append(
            {
                "site": site,
                "depth": k,
                "accuracy": acc,
                "accuracy_std": sd,
                "control_accuracy": cacc,
                "control_std": csd,
                "selectivity": acc - cacc,
                "majority": majority,
                "n": len(y),
            }
        )
    return pd.DataFrame(rows)


def probe_sites(lm: Any, patterns: Sequence[str] | None = None) -> list[str]:
    """Sites to probe: ``patterns`` resolved, or ``embed`` + every ``resid_post``."""
    sm = sitemap_of(lm)
    if not patterns:
        return ["embed"] + [f"resid_post.{i}" for i in range(sm.n_layers)]
    return [s.name for s in sm.resolve(list(patterns))]
