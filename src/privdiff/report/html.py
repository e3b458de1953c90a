"""A self-contained HTML report: headings, prose, tables and images embedded as base64 PNG.

One file that opens anywhere (no server, no assets beside it), so a report can be mailed to a data
owner or attached to an audit. Deliberately tiny: no template engine, everything escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privdiff.utils.atomic import atomic_write_text

# Lazy imports: PIL is imported where an image is encoded, for start-up time (the CLI imports
# privdiff.report).

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1f24;line-height:1.5}
h1{font-size:1.9em;margin-bottom:.2em} h2{border-bottom:2px solid #e3e7ec;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}
.sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:.8em 0;font-size:.93em}
th,td{border:1px solid #d0d7de;padding:.35em .7em;text-align:left;vertical-align:top}
th{background:#f3f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}
figure img{image-rendering:pixelated;border:1px solid #d0d7de;max-width:100%}
figcaption{font-size:.85em;color:#57606a;max-width:520px}
.callout{border-left:4px solid #0969da;background:#f0f6ff;padding:.6em 1em;margin:1em 0}
.callout.warn{border-color:#bf8700;background:#fff8e5}
.callout.bad{border-color:#cf222e;background:#ffefef}
code{background:#f3f5f7;padding:.1em .3em;border-radius:3px}
td.img{padding:.3em;vertical-align:middle} td.img img{image-rendering:pixelated;display:block}
th.bad{background:#ffefef;color:#a40e26} th.good{background:#eaf6ec}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#57606a;padding-top:.3em}
"""


def _png_bytes(image: Any, scale: int = 1) -> bytes:
    """PNG bytes from a file path, PNG bytes, or a uint8 (H, W[, C]) array."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, bytes):
        return image
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr.astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fmt(v: Any) -> tuple[str, bool]:
    """Format a table cell; returns (html, is_numeric)."""
    if isinstance(v, bool) or v is None:
        return html.escape(str(v) if v is not None else "–"), False
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}", True
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f != f:
            return "–", True
        if f == float("inf"):
            return "∞", True
        return (f"{f:.4g}" if abs(f) < 1e5 else f"{f:.3e}"), True
    return html.escape(str(v)), False


def _text_cell(v: Any) -> str:
    """A <td> for a formatted value; numbers are right-aligned."""
    text, numeric = _fmt(v)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


@dataclass
class Section:
    title: str
    level: int = 2
    parts: list[str] = field(default_factory=list)

    def text(self, *paragraphs: str) -> Section:
        """Plain paragraphs (escaped); ``code`` spans in backticks are kept as code."""
        for p in paragraphs:
            esc = html.escape(p)
            segs = esc.split("`")
            esc = "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(segs))
            self.parts.append(f"<p>{esc}</p>")
        return self

    def bullets(self, items: Sequence[str]) -> Section:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        return self

    def callout(self, text: str, kind: str = "info") -> Section:
        cls = {"info": "callout", "warn": "callout warn", "bad": "callout bad"}[kind]
        self.parts.append(f'<div class="{cls}">{html.escape(text)}</div>')
        return self

    def table(
        self,
        rows: Sequence[Sequence[Any]],
        headers: Sequence[str] | None = None,
        caption: str | None = None,
    ) -> Section:
        return self._table(rows, headers, None, caption, _text_cell)

    def image_table(
        self,
        rows: Sequence[Sequence[Any]],
        headers: Sequence[str] | None = None,
        *,
        header_classes: Sequence[str | None] | None = None,
        width: int | None = None,
        caption: str | None = None,
    ) -> Section:
        """A table whose cells may hold images: a path, PNG bytes or uint8 array is embedded (base64),
        ``None`` is an empty cell and anything else is formatted like :meth:`table`.

        ``header_classes`` gives each header cell an optional CSS class (``"bad"`` marks a column
        that must stand out, e.g. a non-private baseline); ``width`` is the display width of images.
        """
        w = f' width="{int(width)}"' if width else ""

        def cell(v: Any) -> str:
            if isinstance(v, (bytes, Path, np.ndarray)):
                data = base64.b64encode(_png_bytes(v)).decode("ascii")
                return f'<td class="img"><img alt="" src="data:image/png;base64,{data}"{w}></td>'
            return _text_cell(v)

        return self._table(rows, headers, header_classes, caption, cell)

    def _table(self, rows, headers, header_classes, caption, cell) -> Section:
        """The one table writer behind :meth:`table` and :meth:`image_table`; ``cell`` draws a <td>."""
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        if headers:
            classes = list(header_classes or [])
            classes += [None] * (len(headers) - len(classes))
            ths = (
                (f'<th class="{html.escape(c)}">' if c else "<th>") + html.escape(str(h)) + "</th>"
                for h, c in zip(headers, classes)
            )
            out.append("<tr>" + "".join(ths) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(cell(v) for v in row) + "</tr>")
        out.append("</table>")
        self.parts.append("".join(out))
        return self

    def image(self, image: Any, caption: str | None = None, *, scale: int = 1, width: int | None = None) -> Section:
        """Embed an image (path, PNG bytes or uint8 array) as a base64 data URI."""
        data = base64.b64encode(_png_bytes(image, scale=scale)).decode("ascii")
        w = f' width="{int(width)}"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        alt = html.escape(caption or self.title)
        self.parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"{w}>{cap}</figure>')
        return self

    def render(self) -> str:
        lvl = max(2, min(self.level, 4))
        anchor = "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")
        return f'<section id="{anchor}"><h{lvl}>{html.escape(self.title)}</h{lvl}>' + "".join(self.parts) + "</section>"


class HtmlReport:
    """Collects sections and writes one self-contained HTML file."""

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def section(self, title: str, level: int = 2) -> Section:
        s = Section(title=title, level=level)
        self.sections.append(s)
        return s

    def render(self) -> str:
        head = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
        )
        top = f"<h1>{html.escape(self.title)}</h1>"
        if self.subtitle:
            top += f'<p class="sub">{html.escape(self.subtitle)}</p>'
        return head + top + "".join(s.render() for s in self.sections) + "</body></html>"

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a report."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.render())
