"""``actscope clue`` as an API: the model answers self-checked arithmetic problems, each
answer is summarised by its hidden-state delta, and CLUE's nearest-centroid score is compared
with the model's own confidence (mean token log-probability) by cross-validated AUROC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from actscope.analyses.explain import figures
from actscope.analyses.explain.answers import generate_answers, summarise_answers
from actscope.analyses.explain.arithmetic import arithmetic_problems, is_correct, parse_answer
from actscope.analyses.explain.clue import (
    auroc,
    bootstrap_ci,
    cross_validated_scores,
    per_layer_auroc,
)
from actscope.errors import DataError
from actscope.report import Report
from actscope.utils import checks


@dataclass
class ClueStudy:
    """One row per answer (``answers``), per-layer AUROC and the headline numbers."""

    answers: pd.DataFrame
    layers: pd.DataFrame
    headline: dict[str, Any] = field(default_factory=dict)


def check_options(
    n: int, max_operand: int, folds: int, max_new_tokens: int, batch_size: int
) -> None:
    """Refuse sizes a CLUE study cannot run with (before the model is loaded): scoring needs
    at least 2 correct and 2 wrong answers, so at least 4 problems, and 2 folds."""
    checks.integer(folds, "--folds", 2)
    checks.integer(n, "--n", 4)
    checks.integer(max_operand, "--max-operand")
    checks.integer(max_new_tokens, "--max-new-tokens")
    checks.integer(batch_size, "--batch-size")


def clue_study(
    lm: Any,
    n: int = 300,
    *,
    seed: int = 0,
    max_operand: int = 60,
    folds: int = 5,
    max_new_tokens: int = 12,
    batch_size: int = 32,
) -> ClueStudy:
    """Generate, check, summarise and score ``n`` arithmetic answers (see module docstring)."""
    check_options(n, max_operand, folds, max_new_tokens, batch_size)
    problems = arithmetic_problems(n, seed=seed, max_operand=max_operand)
    answers = generate_answers(
        lm, [p.prompt for p in problems], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    summarise_answers(lm, answers, batch_size=max(1, batch_size // 2))
    rows = [
        {
            "question": p.question,
            "op": p.op,
            "result": p.result,
            "response": a.text,
            "parsed": parse_answer(a.text),
            "correct": is_correct(p, a.text),
            "n_tokens": len(a.response_ids),
            "mean_logprob": a.mean_logprob,
        }
        for p, a in zip(problems, answers, strict=True)
    ]
    df = pd.DataFrame(rows)
    kept = [i for i, a in enumerate(answers) if a.delta is not None]
    if len(kept) < len(answers):
        df = df.iloc[kept].reset_index(drop=True)
    if df.empty:
        raise DataError("the model produced no answer to score")
    x = np.stack([answers[i].delta for i in kept])  # type: ignore[misc]
    y = df["correct"].to_numpy(bool)
    scores, fold = cross_validated_scores(x, y, folds, seed)
    df["clue_score"] = scores
    df["fold"] = fold
    layers = per_layer_auroc(x, y, folds, seed)
    conf = df["mean_logprob"].to_numpy(float)
    headline = {
        "n_problems": len(problems),
        "n_scored": len(df),
        "n_empty": len(problems) - len(df),
        "accuracy": float(y.mean()),
        "auroc_clue": auroc(scores, y),
        "auroc_clue_ci95": bootstrap_ci(scores, y, seed=seed),
        "auroc_confidence": auroc(conf, y),
        "auroc_confidence_ci95": bootstrap_ci(conf, y, seed=seed),
        "best_layer": int(layers.loc[layers["auroc"].idxmax(), "layer"]),
        "best_layer_auroc": float(layers["auroc"].max()),
        "folds": folds,
        "by_op": by_op(df),
    }
    return ClueStudy(df, layers, headline)


def by_op(df: pd.DataFrame) -> list[dict[str, Any]]:
    """AUROC of CLUE and of confidence within each operation (+, -, *): what each score
    knows beyond the difficulty of the problem type, which both can pick up."""
    rows = []
    for op, g in df.groupby("op", sort=True):
        y = g["correct"].to_numpy(bool)
        rows.append(
            {
                "op": str(op),
                "n": len(g),
                "accuracy": float(y.mean()),
                "auroc_clue": auroc(g["clue_score"].to_numpy(float), y),
                "auroc_confidence": auroc(g["mean_logprob"].to_numpy(float), y),
            }
        )
    return rows


def report(st: ClueStudy, title: str, meta: dict[str, Any]) -> Report:
    h = st.headline
    rep = Report(title, subtitle="CLUE: hidden-state delta nearest-centroid verification")
    rep.kv("Setup", meta)
    rep.kv("Results", {k: v for k, v in h.items() if k != "by_op"})
    rep.table(pd.DataFrame(h["by_op"]), "Within each operation", heading="By operation")
    rep.paragraph(
        "How to read",
        "Each answer is summarised by the change of every layer's residual stream from the "
        "state that began the answer to the state that ended it. Success and failure centroids "
        "come from the other folds' answers; the score is the distance to the failure centroid "
        "minus the distance to the success centroid. The baseline is the model's own mean "
        "token log-probability of its answer. AUROC 0.5 = chance.",
    )
    y = st.answers["correct"].to_numpy(bool)
    curves = []
    for label, col in (("CLUE", "clue_score"), ("mean log-prob", "mean_logprob")):
        fpr, tpr, _ = roc_curve(y, st.answers[col].to_numpy(float))
        curves.append(
            (f"{label} (AUROC {auroc(st.answers[col].to_numpy(float), y):.3f})", fpr, tpr)
        )
    rep.figure(
        figures.roc_figure(curves, "Telling correct from wrong answers"),
        "Cross-validated ROC curves",
        heading="ROC",
    )
    fig = figures.depth_curves(
        st.layers.assign(method="CLUE, one layer"),
        "layer",
        [("auroc", "AUROC")],
        "method",
        "CLUE with one layer's delta",
    )
    rep.figure(fig, "Cross-validated AUROC using a single layer's delta", heading="Per layer")
    rep.table(
        st.answers.drop(columns=["fold"]), "Answers (first rows)", heading="Answers", max_rows=40
    )
    return rep


def write_run(
    st: ClueStudy,
    out: Any,
    args: dict[str, Any],
    model: dict[str, Any],
    seconds: float | None = None,
) -> Any:
    from actscope.runs import RunWriter

    with RunWriter(out, "clue", args) as w:
        w.manifest["model"] = model
        if seconds is not None:
            w.manifest["compute_seconds"] = round(seconds, 3)
        w.table("answers", st.answers)
        w.table("layers", st.layers)
        w.json("summary.json", st.headline)
        meta = {
            "model": model.get("name"),
            "task": "arithmetic (few-shot, self-checked)",
            **{k: args[k] for k in ("n", "seed", "max_operand", "folds") if k in args},
        }
        w.text("report.html", report(st, f"CLUE: {model.get('name')}", meta).render())
    return out
