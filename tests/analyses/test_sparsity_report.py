"""Reports of the sparsity commands render, with the sections and the WINA/TEAL note."""

from __future__ import annotations

import pandas as pd
import torch
from tests._models import get_model

from actscope.analyses.sparsity import decode_benchmark, gemv_benchmark
from actscope.analyses.sparsity.evaluate import SweepResult
from actscope.analyses.sparsity.report import (
    bench_report,
    evaluate_report,
    sweep_pivot,
    wina_vs_teal,
)
from actscope.interventions.sparsify import Sparsifier


def _sweep() -> pd.DataFrame:
    rows = []
    for rule, ppls in (("teal", [10.0, 11.0, 14.0]), ("wina", [10.0, 10.5, 15.0])):
        for t, p in zip((0.0, 0.4, 0.5), ppls, strict=True):
            rows.append(
                {
                    "rule": rule,
                    "allocation": "uniform",
                    "target": t,
                    "ppl": p,
                    "realised_sparsity": t,
                    "weight_sparsity": t,
                }
            )
    return pd.DataFrame(rows)


def test_wina_vs_teal_note_and_pivot() -> None:
    t = _sweep()
    note = wina_vs_teal(t)
    assert note.startswith("WINA beats TEAL at 1 of 2 targets")
    assert "0.4: 11.000 vs 10.500" in note
    p = sweep_pivot(t)
    assert list(p.columns) == ["config", "0", "0.4", "0.5"]
    assert p.set_index("config").loc["wina/uniform", "0.4"] == 10.5
    assert wina_vs_teal(t[t.rule == "teal"]) == "WINA and TEAL were not both evaluated."


def test_reports_render() -> None:
    html = evaluate_report(
        SweepResult(_sweep(), pd.DataFrame(), {"prefill_fraction": 1.0}), {"name": "x"}
    ).render()
    assert "Perplexity table" in html and "prefill fraction sparsified is 1.0" in html
    lm = get_model("tiny:llama")
    g = gemv_benchmark(
        lm, sparsities=(0.5,), dtypes=("fp32",), kernels=("bag",), kinds=("q",), repeats=1, warmup=0
    )
    cfg = {"teal@0.5": (Sparsifier.exact_topk(lm, "teal", 0.5, record=False), 0.5)}
    d = decode_benchmark(lm, cfg, prompt=torch.tensor([1, 2, 3]), new_tokens=2, repeats=1)
    html = bench_report(g, [d], {"name": "tiny"}).render()
    assert "GEMV fp32" in html and "Decode float32, kernel bag" in html
    assert "never timed as a speed-up" in html and html.count("<img") == 2
