"""HTML pieces of the report: escaping, number formatting, tables, confusion matrices, and images and
matplotlib figures embedded as base64 PNG ``data:`` URIs (the page references no file).

Example
-------
>>> fmt(1234567), fmt(0.12345), fmt(3.14159), fmt(float("nan")), fmt(True)
('1,234,567', '0.123', '3.14', '–', 'yes')
>>> esc('<b a="1">')
'&lt;b a=&quot;1&quot;&gt;'
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

FIGURE_DPI = 80
MAX_EMBEDDED_FIGURE_BYTES = 700_000   # larger figure files are downscaled before embedding


def esc(value) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    """A table cell's text: integers with thousands separators, floats to ``digits`` significant digits."""
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if math.isinf(v) or abs(v) >= 1000:
            return f"{v:,.0f}" if math.isfinite(v) else str(v)
        if abs(v) >= 1:
            return f"{v:.{digits}g}"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def _sort_key(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)) and value is not None:
        return "" if isinstance(value, float) and math.isnan(value) else repr(float(value))
    return str(value)


def data_table(frame: pd.DataFrame, *, digits: int = 3, sortable: bool = True, scroll: bool = False,
               nowrap: bool = False, row_class: Callable[[dict], str] | None = None) -> str:
    """An HTML table of ``frame`` (its index is not shown); numbers right-aligned and sortable by value."""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    columns = {c: frame[c].tolist() for c in frame.columns}  # per column: no int -> float upcast of a row
    rows = []
    for i in range(len(frame)):
        cells = []
        for col in frame.columns:
            value = columns[col][i]
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            attrs = f' class="num" data-v="{esc(_sort_key(value))}"' if numeric else ""
            cells.append(f"<td{attrs}>{esc(fmt(value, digits))}</td>")
        cls = row_class({c: columns[c][i] for c in frame.columns}) if row_class else ""
        rows.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    table_cls = " ".join(c for c in ("sortable" if sortable else "", "nowrap" if nowrap else "") if c)
    wrap_cls = "tbl scroll" if scroll else "tbl"
    return (f'<div class="{wrap_cls}"><table class="{table_cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    """A two-column table: one row per (name, value)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<div class="tbl"><table class="kv"><tbody>{rows}</tbody></table></div>'


def not_available(why: str) -> str:
    """The note a section (or part of one) shows instead of what it could not read."""
    return f'<p class="na">not available: {esc(why)}</p>'


def confusion_table(matrix, classes: Sequence[str], true_label: str = "true", pred_label: str = "predicted") -> str:
    """A confusion matrix (rows: true class) as a table shaded by each row's share."""
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        return not_available(f"confusion matrix of shape {m.shape} for {len(classes)} classes")
    row_sums = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row_sums, out=np.zeros_like(m), where=row_sums > 0)
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    rows = []
    for i, c in enumerate(classes):
        cells = "".join(
            f'<td class="num" style="background:rgba(31,119,180,{0.08 + 0.8 * share[i, j]:.2f});'
            f'{"color:#fff;" if share[i, j] > 0.55 else ""}" title="{share[i, j]:.0%} of true {esc(c)}">'
            f"{int(m[i, j]):,}</td>" for j in range(len(classes)))
        rows.append(f"<tr><th>{esc(c)}</th>{cells}</tr>")
    return (f'<div class="tbl"><table class="cm"><thead><tr><th>{esc(true_label)} ↓ / {esc(pred_label)} →</th>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


# --- images and figures -----------------------------------------------------------------------------------


def new_figure(width: float, height: float):
    """A matplotlib Figure with a constrained layout (no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def palette(n: int) -> list:
    """``n`` categorical colours (tab10, tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_uri(fig) -> str:
    """A matplotlib Figure (Agg canvas, no pyplot state) as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def rgb_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) float [0, 1] image as a base64 PNG data URI, quantised to a 256-colour palette.

    A palette PNG (median cut, no dithering) of a false-colour slide thumbnail is a third of the size
    of an RGB one (62 vs 180 KB for a 256 px demo thumbnail) and looks the same at this size.
    """
    from PIL import Image  # matplotlib's own image dependency

    pixels = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB").quantize(256, dither=Image.Dither.NONE)
    buf = BytesIO()
    image.save(buf, format="png", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(path: str | os.PathLike) -> str:
    """A PNG file as a data URI; files over :data:`MAX_EMBEDDED_FIGURE_BYTES` are downscaled by 2 (block mean)."""
    data = Path(path).read_bytes()
    if len(data) > MAX_EMBEDDED_FIGURE_BYTES:
        from matplotlib import image as mpimg

        pixels = mpimg.imread(BytesIO(data))
        while pixels.shape[1] > 600 and len(data) > MAX_EMBEDDED_FIGURE_BYTES:
            h, w = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
            pixels = pixels[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
            buf = BytesIO()
            mpimg.imsave(buf, np.clip(pixels, 0, 1), format="png")
            data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_aspect(uri: str) -> float:
    """Width / height of a PNG data URI (from its IHDR chunk); 1 when it is not a PNG."""
    head = base64.b64decode(uri.split(",", 1)[1][:32])
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 1.0
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width / height if height else 1.0


def img(uri: str, alt: str, *, width: int | None = None, pixelated: bool = False, cls: str = "") -> str:
    """An ``<img>`` of a data URI; ``pixelated``: enlarged by the browser without smoothing."""
    attrs = f' width="{int(width)}"' if width else ""
    classes = " ".join(c for c in (cls, "px" if pixelated else "") if c)
    attrs += f' class="{classes}"' if classes else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{attrs}>'
