"""A small self-contained HTML report: sections of text, tables and matplotlib figures
(embedded as PNG). Reports render what results already hold; they never recompute."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{color:#345;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef2f6}.flag{color:#a40;font-weight:600}.muted{color:#777;font-size:.85em}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
"""


def _fmt(v) -> str:
    if v is None:  # not applicable / not scored: an empty cell, not the word None
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return dict_to_html_table(v)
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return records_to_html_table(v)
        return html.escape(", ".join(_fmt(x) if not isinstance(x, str) else x for x in v))
    return html.escape(str(v))


def dict_to_html_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def records_to_html_table(records: list[dict], columns: list[str] | None = None) -> str:
    if not records:
        return "<p class='muted'>(none)</p>"
    cols = columns or list(records[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure_png(fig, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure_to_html(fig, *, alt: str = "figure") -> str:
    b64 = base64.b64encode(figure_png(fig)).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'/>"


@dataclass
class HtmlReport:
    """Accumulates sections and writes one self-contained HTML file atomically."""

    title: str
    parts: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def heading(self, text: str):
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, *, cls: str | None = None):
        c = f" class='{cls}'" if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def table(self, data):
        self.parts.append(dict_to_html_table(data) if isinstance(data, dict)
                          else records_to_html_table(list(data)))

    def links(self, text: str, items) -> None:
        """A muted paragraph of relative links: `text`, then ``(label, href)`` pairs."""
        from urllib.parse import quote

        self.parts.append(f"<p class='muted'>{html.escape(text)}" + ", ".join(
            f"<a href='{html.escape(quote(href), quote=True)}'>{html.escape(label)}</a>"
            for label, href in items) + "</p>")

    def figure(self, fig, alt="figure"):
        self.parts.append(figure_to_html(fig, alt=alt))

    def flags(self, flags):
        for f in flags:
            self.parts.append(f"<p class='flag'>&#9888; {html.escape(f)}</p>")

    def render(self) -> str:
        from qdmed import __version__
        from qdmed.report._environment import environment

        prov = {"qdmed_version": __version__,
                "generated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "environment": environment(), **self.provenance}
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "".join(self.parts)
            + "<h2>Provenance</h2><pre class='muted'>"
            + html.escape(json.dumps(prov, indent=2, sort_keys=True, default=str))
            + "</pre></body></html>"
        )

    def write(self, path):
        from qdmed.report._atomic import atomic_write_text

        return atomic_write_text(path, self.render())
