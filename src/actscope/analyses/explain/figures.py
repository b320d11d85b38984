"""Matplotlib figures of the explain reports (heatmaps, depth curves, ROC curves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from actscope.report import new_figure


def _matrix(agg: pd.DataFrame, rows: str, cols: str) -> tuple[np.ndarray, list[Any], list[Any]]:
    piv = agg.pivot_table(index=rows, columns=cols, values="ld_norm", aggfunc="mean")
    return piv.to_numpy(float), list(piv.index), list(piv.columns)


def _diverging(ax: Any, m: np.ndarray) -> Any:
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    lim = max(lim, 1e-6)
    return ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")


def position_heatmap(agg: pd.DataFrame, kind: str, labels: Sequence[str], title: str) -> Any:
    """Layer x position heatmap of the normalised logit difference of one site kind."""
    sub = agg[(agg["kind"] == kind) & (agg["head"] < 0)]
    m, layers, pos = _matrix(sub, "layer", "pos_from_end")
    fig, ax = new_figure(
        width=max(6.0, 0.45 * len(pos) + 2), height=max(3.6, 0.16 * len(layers) + 1.5)
    )
    ax.grid(False)
    im = _diverging(ax, m)
    n = len(labels)
    ax.set_xticks(range(len(pos)))
    ax.set_xticklabels(
        [repr(labels[n + p]) if 0 <= n + p < n else str(p) for p in pos], rotation=60, ha="right"
    )
    ax.set_yticks(range(0, len(layers), max(1, len(layers) // 15)))
    ax.set_yticklabels([str(layers[i]) for i in range(0, len(layers), max(1, len(layers) // 15))])
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="normalised logit difference")
    return fig


def head_heatmap(agg: pd.DataFrame, title: str) -> Any:
    """Layer x head heatmap of head patching over all positions."""
    sub = agg[(agg["head"] >= 0) & (agg["pos_from_end"] == 0)]
    m, layers, heads = _matrix(sub, "layer", "head")
    fig, ax = new_figure(
        width=max(4.5, 0.5 * len(heads) + 2), height=max(3.6, 0.16 * len(layers) + 1.5)
    )
    ax.grid(False)
    im = _diverging(ax, m)
    ax.set_xticks(range(len(heads)))
    ax.set_xticklabels([str(h) for h in heads])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(0, len(layers), max(1, len(layers) // 15)))
    ax.set_yticklabels([str(layers[i]) for i in range(0, len(layers), max(1, len(layers) // 15))])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="normalised logit difference")
    return fig


def agreement_scatter(merged: pd.DataFrame, title: str) -> Any:
    """Exact patching (x) against the attribution estimate (y), one point per unit."""
    fig, ax = new_figure(width=5.2, height=4.6)
    for kind, g in merged.groupby("kind", sort=False):
        ax.scatter(g["ld_norm_exact"], g["ld_norm_atp"], s=10, alpha=0.6, label=str(kind))
    lo = float(np.nanmin(merged[["ld_norm_exact", "ld_norm_atp"]].to_numpy()))
    hi = float(np.nanmax(merged[["ld_norm_exact", "ld_norm_atp"]].to_numpy()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    ax.set_xlabel("exact patching (normalised LD)")
    ax.set_ylabel("attribution estimate (normalised LD)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def depth_curves(
    curves: pd.DataFrame,
    x: str,
    ys: Sequence[tuple[str, str]],
    group: str,
    title: str,
    log_y: Sequence[bool] = (),
) -> Any:
    """One panel per (column, label) in ``ys``: the column against ``x``, a line per group."""
    fig, axes = new_figure(ncols=len(ys), width=4.6, height=3.6)
    axes = np.atleast_1d(axes)
    for i, (col, label) in enumerate(ys):
        ax = axes[i]
        for name, g in curves.groupby(group, sort=False):
            ax.plot(g[x], g[col], marker="o", ms=3, label=str(name))
        if i < len(log_y) and log_y[i]:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def probe_curve(table: pd.DataFrame, title: str) -> Any:
    """Probe accuracy, control accuracy and selectivity across depth."""
    fig, ax = new_figure(width=7.0, height=3.8)
    d = table["depth"]
    ax.errorbar(d, table["accuracy"], yerr=table["accuracy_std"], marker="o", ms=3, label="task")
    ax.errorbar(
        d, table["control_accuracy"], yerr=table["control_std"], marker="s", ms=3, label="control"
    )
    ax.plot(d, table["selectivity"], marker="^", ms=3, label="selectivity")
    ax.axhline(float(table["majority"].iloc[0]), color="grey", ls=":", label="majority")
    ax.set_xlabel("depth (0 = embeddings, l + 1 = after layer l)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> Any:
    """ROC curves: one (label, false-positive rates, true-positive rates) per method."""
    fig, ax = new_figure(width=4.8, height=4.4)
    for label, fpr, tpr in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
