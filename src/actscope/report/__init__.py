"""Self-contained HTML reports and the shared plotting style."""

from actscope.report.html import Report
from actscope.report.plots import new_figure

__all__ = ["Report", "new_figure"]
