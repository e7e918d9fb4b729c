"""The per-slide CTC review page (``results/<slide>/review.html``): one self-contained HTML file (images
as ``data:`` URIs, style and script inline; it requests nothing) listing the slide's candidates with the
patch of each in every channel and a false-colour composite, sortable by any column, where a reviewer
marks each candidate CTC / not CTC / unsure, adds a note, and exports the decisions as
``<slide>.csv`` (:data:`hemoprofile.io.ctc_review.REVIEW_COLUMNS`) to put in the reviews folder. Its style
sheet and script are ``static/review.css`` and ``static/review.js``, inlined like the report's.

Decisions are kept in the browser's local storage under the slide and its candidate set, so closing the
page does not lose them; a page rebuilt with other candidates starts empty, and an exported CSV can be
loaded back into it (decisions on cells not on the page are skipped and counted). A second click on the
chosen button clears a decision; undecided candidates are not exported.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.io.ctc_review import DECISIONS
from hemoprofile.io.patches import open_patch_array, read_patch_rows
from hemoprofile.report.html import esc, fmt, rgb_uri
from hemoprofile.report.images import display_composite
from hemoprofile.vocabulary import to_unit

#: Columns shown (candidates.parquet name -> header), numeric unless listed in _TEXT.
SHOWN = {"rank": "rank", "cell_id": "cell", "p_ctc_CTC": "score", "p_ctc_calibrated": "calibrated p",
         "gate_label": "gate", "area_um2": "area µm²", "mean_CK": "CK", "mean_CD45": "CD45", "mean_DAPI": "DAPI",
         "mean_VIM": "VIM", "nucleus_ratio": "N/C", "cluster_size": "cluster cells"}
_TEXT = {"gate_label"}
_LABELS = {"CTC": "CTC", "not_CTC": "not CTC", "unsure": "unsure"}


def _static(name: str) -> str:
    return importlib.resources.files("hemoprofile.report").joinpath("static", name).read_text(encoding="utf-8")


def _grey_uri(unit: np.ndarray) -> str:
    return rgb_uri(np.repeat(np.clip(unit, 0, 1)[..., None], 3, axis=2))


def candidate_images(patches_path: str | os.PathLike, rows: np.ndarray) -> tuple[list[list[str]], list[str]]:
    """For each patches.zarr row: the composite then every channel as PNG data URIs; and the channel names."""
    array, channels, _ = open_patch_array(patches_path)
    order = np.argsort(rows, kind="stable")
    pixels = read_patch_rows(array, np.asarray(rows, np.int64)[order])
    out: list[list[str]] = [[] for _ in rows]
    for k, i in enumerate(order):
        unit = to_unit(pixels[k])
        out[i] = [rgb_uri(display_composite(unit, channels))] + [_grey_uri(unit[c]) for c in range(len(channels))]
    return out, channels


def review_page_html(slide: str, candidates: pd.DataFrame, patches_path: str | os.PathLike, *,
                     threshold: Mapping | None = None, max_candidates: int | None = None) -> str:
    """The review page of one slide as an HTML string.

    Parameters
    ----------
    slide : the slide name (the exported CSV's ``slide`` column and file name).
    candidates : the slide's candidates.parquet (ranked; needs ``cell_id``, ``rank``, ``row``, ``p_ctc_CTC``).
    patches_path : the slide's patches.zarr (rows = cells.parquet's).
    threshold : what chose the candidates (candidates.parquet metadata: ``threshold``, ``source``), shown.
    max_candidates : show at most this many (the highest ranked); the page says how many were left out.

    Example
    -------
    >>> html = review_page_html("S1", read_candidates("results/S1/candidates.parquet"), "results/S1/patches.zarr")  # doctest: +SKIP
    """
    total = len(candidates)
    shown = candidates.sort_values("rank").head(max_candidates) if max_candidates else candidates.sort_values("rank")
    images, channels = (candidate_images(patches_path, shown["row"].to_numpy(np.int64)) if len(shown)
                        else ([], open_patch_array(patches_path)[1]))
    columns = [c for c in SHOWN if c in shown]
    head = "".join(f'<th data-type="{"text" if c in _TEXT else "num"}">{esc(SHOWN[c])}</th>' for c in columns)
    head += '<th>patch: composite · ' + " · ".join(esc(c) for c in channels) + "</th><th>decision</th><th>note</th>"
    body_rows = []
    for (_, r), uris in zip(shown.iterrows(), images):
        cells = []
        for c in columns:
            v = r[c]
            if c in _TEXT:
                cells.append(f"<td>{esc(v)}</td>")
            else:
                number = float(v) if pd.notna(v) else float("nan")
                key = "" if np.isnan(number) else f' data-v="{number!r}"'
                cells.append(f'<td class="num"{key}>{esc(fmt(v))}</td>')
        figures = "".join(f'<figure><img src="{u}" alt="{esc(name)} of cell {int(r["cell_id"])}">'
                          f"<figcaption>{esc(name)}</figcaption></figure>"
                          for u, name in zip(uris, ["composite", *channels]))
        buttons = "".join(f'<button type="button" class="d-{d}" data-decision="{d}">{_LABELS[d]}</button>'
                          for d in DECISIONS)
        body_rows.append(f'<tr data-cell-id="{int(r["cell_id"])}" data-rank="{int(r["rank"])}">{"".join(cells)}'
                         f'<td class="imgs">{figures}</td><td class="decide">{buttons}</td>'
                         f'<td class="note"><input type="text" aria-label="note on cell {int(r["cell_id"])}"></td></tr>')
    key = hashlib.blake2b(",".join(map(str, shown["cell_id"].tolist())).encode(), digest_size=6).hexdigest()
    how = ""
    if threshold:
        how = (f"Candidates: p_ctc_CTC ≥ {float(threshold.get('threshold', float('nan'))):.4g} "
               f"({esc(threshold.get('source', ''))}). ")
    left_out = (f" Showing the {len(shown):,} highest ranked; {total - len(shown):,} more are in candidates.parquet "
                "(raise ctc.review_page_max to see them)." if len(shown) < total else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>CTC review · {esc(slide)}</title><style>{_static("review.css")}</style></head>
<body data-slide="{esc(slide)}" data-candidates="{key}">
<header><h1>CTC review · {esc(slide)}</h1>
<p>{total:,} candidate(s). {how}{left_out}</p>
<div class="bar"><label>Reviewer <input id="reviewer" type="text" size="12"></label>
<span id="progress"></span>
<button type="button" id="export" class="export">Export decisions (CSV)</button>
<button type="button" id="clear">Clear all</button>
<label>Load decisions (CSV) <input id="load" type="file" accept=".csv,text/csv"></label>
<span id="loaded"></span></div></header>
<main><p class="help">Mark each candidate <b>CTC</b>, <b>not CTC</b> or <b>unsure</b> (a second click clears it);
click a column header to sort. Decisions stay in this browser until you export them (<b>Load</b> takes an exported CSV back, to go on
reviewing elsewhere): <b>Export</b> downloads
<code>{esc(slide)}.csv</code>; put it in the workflow's reviews folder (<code>reviews/{esc(slide)}.csv</code> beside
the sample sheet, or <code>ctc.reviews</code>) and rerun: the patient table then counts the cells marked CTC
(unsure and undecided candidates are not counted). Patches: {len(channels)} channels, each shown alone (grey)
and as the composite (DAPI blue, CK red, VIM green, CD45 grey).</p>
<table id="candidates"><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table></main>
<script>{_static("review.js")}</script></body></html>
"""


def write_review_page(slide: str, candidates: pd.DataFrame, patches_path: str | os.PathLike,
                      out: str | os.PathLike, **options) -> None:
    """Write :func:`review_page_html` to ``out`` atomically."""
    html = review_page_html(slide, candidates, patches_path, **options)
    with atomic_output(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(html)
