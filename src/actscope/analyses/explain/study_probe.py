"""``actscope probe`` as an API: per-layer probes of a labelled dataset with a control task,
the tables and the HTML report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from actscope.analyses.explain import figures
from actscope.analyses.explain.probes import (
    Position,
    collect_features,
    control_labels,
    fit_probes,
    probe_sites,
)
from actscope.datasets.explain import read_jsonl, require
from actscope.errors import DataError
from actscope.report import Report
from actscope.utils import checks


@dataclass
class ProbeStudy:
    """Probe table (one row per site) and how the control task was keyed."""

    table: pd.DataFrame
    n: int
    labels: list[str]
    control_key: str


def load_labelled(
    source: str | Path, limit: int | None = None
) -> tuple[list[str], list[str], list[str] | None]:
    """(texts, labels, keys or None) from a shipped name (``cities_truth``) or a JSONL with
    ``text`` and ``label`` (and optionally ``key``, the unit the control task labels)."""
    rows = read_jsonl(source)
    require(rows, ("text", "label"), str(source))
    rows = rows[:limit] if limit else rows
    keys = [str(r["key"]) for r in rows] if all("key" in r for r in rows) else None
    return [str(r["text"]) for r in rows], [str(r["label"]) for r in rows], keys


def check_labels(labels: Sequence[str], folds: int) -> None:
    """Refuse data a ``folds``-fold cross-validated probe cannot be fitted on: fewer than two
    distinct labels, or a label with fewer than ``folds`` examples (every held-out fold must
    hold each label, so two rows give no meaningful accuracy)."""
    checks.integer(folds, "folds", 2)
    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError("probing needs at least two distinct labels")
    label, fewest = min(counts.items(), key=lambda kv: kv[1])
    if fewest < folds:
        raise DataError(
            f"{folds}-fold probing needs at least {folds} rows of each label; label {label!r} "
            f"has {fewest} ({len(labels)} rows in all)"
        )


def probe_study(
    lm: Any,
    texts: Sequence[str],
    labels: Sequence[str],
    keys: Sequence[str] | None = None,
    *,
    sites: Sequence[str] | None = None,
    position: Position = "last",
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
    batch_size: int = 16,
) -> ProbeStudy:
    """Collect features at every site, fit task and control probes, report selectivity.

    Without ``keys`` the control task is keyed by the token at the probed position (its last
    token), as in Hewitt & Liang's word-type control.
    """
    check_labels(labels, folds)
    checks.number(c, "C", 0.0, low_open=True)
    checks.integer(batch_size, "batch size")
    names = probe_sites(lm, sites)
    feats, last = collect_features(lm, texts, names, position, batch_size)
    key_name = "key" if keys is not None else "last token"
    control = control_labels(keys if keys is not None else last, labels, seed)
    table = fit_probes(feats, labels, control, folds, seed, c)
    return ProbeStudy(table, len(texts), sorted(set(labels)), key_name)


def summary(st: ProbeStudy) -> dict[str, Any]:
    """Best depth by accuracy and by selectivity, and the curves."""
    t = st.table
    best = t.loc[t["accuracy"].idxmax()]
    best_sel = t.loc[t["selectivity"].idxmax()]
    return {
        "n": st.n,
        "labels": st.labels,
        "control_key": st.control_key,
        "majority": float(t["majority"].iloc[0]),
        "best_accuracy": {
            "site": best["site"],
            "accuracy": float(best["accuracy"]),
            "selectivity": float(best["selectivity"]),
        },
        "best_selectivity": {
            "site": best_sel["site"],
            "accuracy": float(best_sel["accuracy"]),
            "selectivity": float(best_sel["selectivity"]),
        },
        "accuracy_by_depth": [round(float(v), 4) for v in t["accuracy"]],
        "control_by_depth": [round(float(v), 4) for v in t["control_accuracy"]],
        "selectivity_by_depth": [round(float(v), 4) for v in t["selectivity"]],
    }


def report(st: ProbeStudy, title: str, meta: dict[str, Any]) -> Report:
    rep = Report(title, subtitle="linear probes with a control task")
    rep.kv(
        "Setup",
        {
            **meta,
            "examples": st.n,
            "labels": ", ".join(st.labels),
            "control task keyed by": st.control_key,
        },
    )
    rep.paragraph(
        "How to read",
        "Accuracy is k-fold cross-validated accuracy of a logistic-regression probe on each "
        "site's vector. The control task gives every key a random label; its accuracy is what "
        "the probe reaches by memorising keys. Selectivity = task accuracy - control accuracy.",
    )
    rep.figure(
        figures.probe_curve(st.table, "Probe accuracy across depth"),
        "Task and control accuracy (mean +- sd over folds) and selectivity",
        heading="Accuracy across depth",
    )
    rep.table(st.table, "One row per site", max_rows=200)
    return rep


def write_run(
    st: ProbeStudy,
    out: Any,
    args: dict[str, Any],
    model: dict[str, Any],
    seconds: float | None = None,
) -> Any:
    from actscope.runs import RunWriter

    with RunWriter(out, "probe", args) as w:
        w.manifest["model"] = model
        if seconds is not None:
            w.manifest["compute_seconds"] = round(seconds, 3)
        w.table("probes", st.table)
        w.json("summary.json", summary(st))
        meta = {"model": model.get("name"), "dataset": args.get("data")}
        w.text("report.html", report(st, f"Probes: {model.get('name')}", meta).render())
    return out
