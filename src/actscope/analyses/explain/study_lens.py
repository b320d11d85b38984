"""``actscope lens`` as an API: logit lens (and tuned lens) over depth for prompts with
target tokens, the corpus fit of the tuned lens, the tables and the HTML report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from actscope.analyses.explain import figures
from actscope.analyses.explain.lens import (
    TunedLens,
    corpus_kl,
    fit_tuned_lens,
    lens_curves,
    lens_table,
)
from actscope.datasets.explain import read_jsonl, require
from actscope.report import Report


@dataclass
class LensStudy:
    """Per-prompt lens table, depth curves, optional corpus KL and the tuned lens used."""

    prompts: list[str]
    targets: list[str]
    table: pd.DataFrame
    curves: pd.DataFrame
    tuned: TunedLens | None = None
    fit_tokens: int = 0
    corpus: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_prompts(source: str | Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(prompts, targets) from a shipped name (``facts``) or a JSONL with prompt/target."""
    rows = read_jsonl(source)
    require(rows, ("prompt", "target"), str(source))
    rows = rows[:limit] if limit else rows
    return [str(r["prompt"]) for r in rows], [str(r["target"]) for r in rows]


def corpus_batches(
    lm: Any, corpus: str, part: int, max_tokens: int, seq_len: int, batch_size: int, seed: int
) -> list[Any]:
    """Batches of half ``part`` (0 = fit, 1 = held out) of a corpus split 50/50 by ``seed``."""
    from actscope.data import default_pad_id, load_corpus, make_batches, tokenize_corpus

    lm.check_seq_len(seq_len)
    halves = load_corpus(corpus).split(0.5, seed=seed)
    toks = tokenize_corpus(
        halves[part], lm.tokenizer, seq_len=seq_len, max_tokens=max_tokens, seed=seed
    )
    pad = default_pad_id(lm.tokenizer)
    return list(make_batches(toks, batch_size=batch_size, pad_id=pad))


def lens_study(
    lm: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    tuned: TunedLens | None = None,
    fit_batches: Sequence[Any] | None = None,
    eval_batches: Sequence[Any] | None = None,
    ridge: float = 1e-3,
    eval_tokens: int = 256,
) -> LensStudy:
    """Logit lens on ``prompts``; with ``fit_batches`` (or a given ``tuned``) the tuned lens
    too, and with ``eval_batches`` the mean KL to the final distribution on held-out text."""
    n_fit = 0
    if tuned is None and fit_batches is not None:
        tuned, n_fit = fit_tuned_lens(lm, fit_batches, ridge=ridge)
    table = lens_table(lm, prompts, targets, tuned)
    st = LensStudy(list(prompts), list(targets), table, lens_curves(table), tuned, n_fit)
    if eval_batches is not None:
        st.corpus = corpus_kl(lm, eval_batches, tuned, max_tokens=eval_tokens)
    return st


def summary(st: LensStudy) -> dict[str, Any]:
    """Per lens: the first depth where the median target rank is 0, and final-depth numbers."""
    out: dict[str, Any] = {"n_prompts": len(st.prompts), "tuned_fit_tokens": st.fit_tokens}
    for lens, g in st.curves.groupby("lens", sort=False):
        first = g[g["median_rank"] == 0]["depth"]
        out[str(lens)] = {
            "first_depth_median_rank_0": int(first.iloc[0]) if len(first) else None,
            "top1_by_depth": [round(float(v), 4) for v in g["top1"]],
            "mean_prob_by_depth": [round(float(v), 4) for v in g["mean_prob"]],
            "median_rank_by_depth": [float(v) for v in g["median_rank"]],
        }
    if st.corpus is not None:
        piv = st.corpus.pivot(index="depth", columns="lens", values="mean_kl")
        out["corpus_kl_by_depth"] = {str(c): [round(float(v), 4) for v in piv[c]] for c in piv}
        out["corpus_kl_tokens"] = int(st.corpus["tokens"].iloc[0])
    return out


def report(st: LensStudy, title: str, meta: dict[str, Any]) -> Report:
    """HTML report: depth curves (rank, probability, top-1, KL), corpus KL, examples."""
    rep = Report(title, subtitle="logit lens" + (" and tuned lens" if st.tuned else ""))
    rep.kv("Setup", {**meta, "prompts": len(st.prompts), "tuned fit tokens": st.fit_tokens})
    rep.paragraph(
        "How to read",
        "Depth 0 is the embedding, depth l+1 the residual stream after layer l. The logit lens "
        "applies the final norm and the unembedding to each depth; the tuned lens first maps "
        "the rms-normalised residual through an affine map fitted on the corpus (least squares "
        "to the final norm's output). Rank 0 means the target is the top prediction.",
    )
    fig = figures.depth_curves(
        st.curves,
        "depth",
        [
            ("median_rank", "median rank of target"),
            ("mean_prob", "mean target probability"),
            ("top1", "share with target at rank 0"),
        ],
        "lens",
        "Target token across depth",
        log_y=(True, False, False),
    )
    rep.figure(fig, "Target rank, probability and top-1 rate by depth", heading="Depth curves")
    rep.table(st.curves, "Per lens and depth", max_rows=200)
    if st.corpus is not None:
        fig = figures.depth_curves(
            st.corpus,
            "depth",
            [("mean_kl", "KL(final || lens), nats")],
            "lens",
            "Held-out corpus",
            log_y=(True,),
        )
        rep.figure(
            fig,
            "Mean KL to the model's final distribution on held-out corpus tokens",
            heading="Corpus KL",
        )
    ex = st.table[(st.table["prompt"] < 4)]
    piv = ex.pivot_table(
        index=["lens", "depth"], columns="prompt", values="top_token", aggfunc="first"
    )
    piv.columns = [repr(st.prompts[int(c)][-40:]) for c in piv.columns]
    rep.table(
        piv.reset_index(),
        "Top token by depth for the first prompts",
        heading="Examples",
        max_rows=200,
    )
    return rep


def write_run(
    st: LensStudy,
    out: Any,
    args: dict[str, Any],
    model: dict[str, Any],
    seconds: float | None = None,
) -> Any:
    """Write manifest, summary.json, tables (lens, curves, corpus_kl), the tuned lens
    (exports/tuned_lens.safetensors) and report.html."""
    from actscope.runs import RunWriter

    with RunWriter(out, "lens", args) as w:
        w.manifest["model"] = model
        if seconds is not None:
            w.manifest["compute_seconds"] = round(seconds, 3)
        w.table("lens", st.table)
        w.table("curves", st.curves)
        if st.corpus is not None:
            w.table("corpus_kl", st.corpus)
        if st.tuned is not None:
            st.tuned.save(w.file("exports/tuned_lens.safetensors"))
        w.json("summary.json", summary(st))
        meta = {"model": model.get("name"), "prompts": args.get("prompts")}
        w.text("report.html", report(st, f"Lens: {model.get('name')}", meta).render())
    return out
