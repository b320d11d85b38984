"""Self-contained HTML reports: one file, inline CSS, figures embedded as base64 PNG.

A report opens from disk with no server and no network. Sections are appended in order::

    rep = Report("Activation profile: smollm2-135m")
    rep.text("Summary", "<p>...</p>")
    rep.figure(fig, "Per-layer top-1/2/3 |a| and median")
    rep.table(df, "Massive activations", max_rows=50)
    html = rep.render()
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#1d1d1f;line-height:1.45;padding:0 1em}
h1{font-size:1.7em;border-bottom:2px solid #333;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}.kv td{text-align:left}.note{color:#555;font-size:.9em}
nav a{margin-right:1em;font-size:.9em}
"""


@dataclass
class Report:
    """An HTML report built section by section."""

    title: str
    subtitle: str = ""
    parts: list[tuple[str, str]] = field(default_factory=list)

    def text(self, heading: str, body_html: str) -> None:
        """A section with a heading and raw (trusted) HTML body."""
        self.parts.append((heading, body_html))

    def paragraph(self, heading: str, text: str) -> None:
        """A section with escaped plain text."""
        self.parts.append((heading, f"<p>{html.escape(text)}</p>"))

    def kv(self, heading: str, items: dict[str, Any]) -> None:
        """A two-column key/value table."""
        rows = "".join(
            f"<tr><td><b>{html.escape(str(k))}</b></td><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in items.items()
        )
        self.parts.append((heading, f"<table class='kv'>{rows}</table>"))

    def figure(self, fig: Any, caption: str, heading: str | None = None, dpi: int = 110) -> None:
        """Embed a matplotlib figure as a base64 PNG (the figure is closed afterwards)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches=None)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        body = (
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'/>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.parts.append((heading or "", body))

    def table(
        self,
        df: pd.DataFrame,
        caption: str,
        heading: str | None = None,
        max_rows: int = 60,
        float_fmt: str = "{:.4g}",
    ) -> None:
        """Embed the first ``max_rows`` rows of ``df`` (floats formatted with ``float_fmt``)."""
        shown = df.head(max_rows)
        table = shown.to_html(
            index=False, border=0, float_format=lambda x: float_fmt.format(x), escape=True
        )
        more = (
            f"<p class='note'>{len(df) - max_rows} more rows in the Parquet table.</p>"
            if len(df) > max_rows
            else ""
        )
        self.parts.append(
            (heading or "", f"<p class='note'>{html.escape(caption)}</p>{table}{more}")
        )

    def render(self) -> str:
        """The whole document as a string."""
        heads = [h for h, _ in self.parts if h]
        nav = " ".join(f"<a href='#s{i}'>{html.escape(h)}</a>" for i, h in enumerate(heads))
        body, k = [], 0
        for heading, content in self.parts:
            if heading:
                body.append(f"<h2 id='s{k}'>{html.escape(heading)}</h2>")
                k += 1
            body.append(content)
        sub = f"<p class='note'>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{sub}<nav>{nav}</nav>{''.join(body)}</body></html>"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
