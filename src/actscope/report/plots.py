"""Matplotlib set-up shared by every report: headless backend and one consistent style."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def new_figure(
    ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.6, **kw: Any
) -> tuple[Any, Any]:
    """A figure with ``nrows x ncols`` axes sized ``width x height`` inches per axis.

    Returns ``(fig, ax)`` for a single axis, else ``(fig, axes)`` with ``axes`` flattened
    row-major into a 1-D array.
    """
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        layout=kw.pop("layout", "constrained"),
        **kw,
    )
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, axes[0, 0] if nrows * ncols == 1 else axes.ravel()
