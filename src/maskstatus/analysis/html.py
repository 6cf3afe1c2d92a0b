"""Pieces of one self-contained HTML page: CSS, tables, figures and thumbnails as data URIs.

Reports are meant to be mailed, archived next to a run and opened offline, so
nothing on a page points outside it: the CSS is inline and every picture is a
``data:`` URI. Every function returns an HTML string; values are escaped here,
so callers pass plain text.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; line-height: 1.4; }
header { background: #263238; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #cfd8dc; font-size: 13px; }
nav { padding: 8px 24px; background: #eceff1; font-size: 13px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #37474f; text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { padding: 0 24px 40px; max-width: 1400px; }
section { margin-top: 26px; }
h2 { font-size: 18px; border-bottom: 2px solid #cfd8dc; padding-bottom: 3px; }
h3 { font-size: 15px; margin-bottom: 6px; }
p.note { color: #555; font-size: 13px; margin: 4px 0 10px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; background: #fff; }
th, td { border: 1px solid #d5dbdf; padding: 3px 8px; }
th { background: #eceff1; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.heat td { text-align: center; min-width: 24px; padding: 2px 4px; font-size: 12px; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.kpi { background: #fff; border: 1px solid #d5dbdf; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.kpi b { display: block; font-size: 20px; }
.kpi span { font-size: 12px; color: #555; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
img.fig { max-width: 100%; background: #fff; border: 1px solid #e0e0e0; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.card { background: #fff; border: 1px solid #d5dbdf; border-radius: 4px; padding: 4px; font-size: 11px;
        text-align: center; }
.card img { display: block; margin: 0 auto 2px; }
.card .bad { color: #b71c1c; }
.strip img { margin-right: 2px; vertical-align: middle; }
.ok { color: #2e7d32; font-weight: 600; }
.warn { color: #b71c1c; font-weight: 600; }
pre { background: #fff; border: 1px solid #d5dbdf; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Section:
    """One part of a page: ``key`` is its anchor id (and what tests look for), ``body`` is HTML."""

    key: str
    title: str
    body: str


def generator_meta(generator: str) -> str:
    """The tag naming what wrote a page: how a command knows a file it may replace is its own earlier page."""
    return f'<meta name="generator" content="{esc(generator)}">'


def is_page_of(path: str | Path, generator: str) -> bool:
    """Whether the file at ``path`` is a page ``generator`` wrote (its ``generator_meta`` in the head)."""
    from ..outputs import head_contains

    return head_contains(Path(path), generator_meta(generator))


def page(title: str, subtitle: str, sections: Sequence[Section], generator: str = "maskstatus") -> str:
    """A whole HTML document: header, a contents bar linking every section, the sections.

    ``generator`` (e.g. "maskstatus report") goes into a ``<meta name="generator">`` tag (see ``is_page_of``).
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.key)}">\n<h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{generator_meta(generator)}\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)} &middot; written {stamp}</p></header>\n"
        f"<nav>{nav}</nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def kpis(items: Iterable[tuple[str, object]]) -> str:
    """Headline numbers as boxes: (label, value)."""
    boxes = "".join(f'<div class="kpi"><b>{esc(value)}</b><span>{esc(label)}</span></div>' for label, value in items)
    return f'<div class="kpis">{boxes}</div>'


def _cell(value: object, digits: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{esc(value)}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="num">{int(value)}</td>'
    if isinstance(value, (float, np.floating)):
        text = "" if np.isnan(value) else f"{float(value):.{digits}f}"
        return f'<td class="num">{text}</td>'
    return f"<td>{esc(value)}</td>"


def table(
    rows: Sequence[Sequence[object]], header: Sequence[str], digits: int = 3, raw: Sequence[int] = (), attrs: str = ""
) -> str:
    """An HTML table; numbers right-aligned, floats to ``digits`` places. Columns listed in ``raw`` hold HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = "".join(f"<td>{v}</td>" if i in raw else _cell(v, digits) for i, v in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def frame_table(df, digits: int = 3, index: bool = False) -> str:
    """A pandas DataFrame as a ``table``."""
    frame = df.reset_index() if index else df
    return table([list(r) for r in frame.itertuples(index=False)], [str(c) for c in frame.columns], digits)


def heat_table(
    matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], corner: str = "true \\ pred"
) -> str:
    """A count matrix as a table shaded by each row's share (so rare rows read as well as common ones).

    The diagonal is shaded green, the rest red: a confusion matrix reads at a glance.
    """
    matrix = np.asarray(matrix)
    sums = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=np.float64), where=sums > 0)
    head = "".join(f"<th>{esc(c)}</th>" for c in col_names)
    lines = []
    for i, name in enumerate(row_names):
        cells = []
        for j in range(matrix.shape[1]):
            alpha = 0.08 + 0.8 * share[i, j] if matrix[i, j] else 0.0
            colour = "46,125,50" if i == j else "198,40,40"
            style = f' style="background:rgba({colour},{alpha:.2f})"' if alpha else ""
            title = f' title="{share[i, j]:.1%} of {esc(name)}"'
            cells.append(f"<td{style}{title}>{int(matrix[i, j]) if matrix[i, j] else ''}</td>")
        lines.append(f'<tr><th>{esc(name)}</th>{"".join(cells)}<td class="num">{int(sums[i, 0])}</td></tr>')
    return (
        f'<table class="heat"><thead><tr><th>{esc(corner)}</th>{head}<th>total</th></tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table>"
    )


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(fig: Figure, alt: str, dpi: int = 90) -> str:
    """A matplotlib Figure as an embedded PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return f'<img class="fig" alt="{esc(alt)}" src="{data_uri(buf.getvalue(), "image/png")}">'


def thumbnail_uri(path: str | Path, box: tuple[int, int] = (72, 96)) -> str | None:
    """A JPEG data URI of the image shrunk to fit ``box`` (width, height), upright; None when unreadable."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", box)  # JPEG: decode at a reduced scale, much faster for big photos
            small = ImageOps.contain(ImageOps.exif_transpose(img).convert("RGB"), box)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def thumbnail(path: str | Path, box: tuple[int, int] = (72, 96), title: str = "") -> str:
    """An <img> of a thumbnail, or a marked placeholder when the file cannot be read."""
    uri = thumbnail_uri(path, box)
    tip = esc(title or Path(path).name)
    if uri is None:
        return f'<span class="bad" title="{tip}">[unreadable {esc(Path(path).name)}]</span>'
    return f'<img src="{uri}" width="{box[0]}" title="{tip}" alt="{tip}">'


def card(image_html: str, caption_lines: Sequence[str]) -> str:
    """A thumbnail with caption lines below it (plain text, escaped)."""
    caption = "<br>".join(esc(line) for line in caption_lines)
    return f'<div class="card">{image_html}{caption}</div>'


def write_page(text: str, out: str | Path) -> Path:
    """Write a page atomically (a browser never sees half a file)."""
    from ..runs import atomic_write_text

    out = Path(out)
    # Character references keep the file pure ASCII: correct whatever the locale's default encoding.
    atomic_write_text(out, text.encode("ascii", "xmlcharrefreplace").decode("ascii"))
    return out
