"""Section ``qc``: per slide a thumbnail (at most 256 px wide) and a full-resolution detail crop, false
colour (DAPI blue, CK red, VIM green, CD45 grey) with the segmentation outlines of labels.zarr (a
single-cell collection: its files' verdicts from qc.csv instead); cell counts; per channel the median of the cells' mean raw intensity, flagged when more than 3 robust z from
the cohort (:func:`hemoprofile.report.qc.intensity_qc`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemoprofile.report.html import data_table, esc, img, not_available, rgb_uri
from hemoprofile.report.images import slide_images
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.qc import QC_MIN_SLIDES, QC_Z_THRESHOLD, intensity_qc


def render(ctx: ReportContext) -> str:
    slides = ctx.slides
    if not slides:
        return not_available("the sample sheet lists no slides")
    have_cells = [s for s in slides if s.n_cells is not None]
    parts = []
    if have_cells:
        channels = list(dict.fromkeys(c for s in have_cells for c in s.medians))
        medians = pd.DataFrame([[s.medians.get(c, np.nan) for c in channels] for s in slides],
                               index=[s.slide for s in slides], columns=channels)
        qc = intensity_qc(medians)
        table = pd.DataFrame({"slide": [s.slide for s in slides], "patient": [s.patient for s in slides],
                              "condition": [s.condition for s in slides],
                              "cells": pd.Series([s.n_cells for s in slides], dtype=object)})
        for c in channels:
            table[f"median {c}"] = qc[c].to_numpy()
            table[f"z {c}"] = qc[f"z_{c}"].to_numpy()
        table["flag"] = ["⚠ " + r if f else "" for f, r in zip(qc["flagged"], qc["reason"])]
        flagged = [s for s, f in zip(qc.index, qc["flagged"]) if f]
        n_ok = int(medians.notna().all(axis=1).sum())
        if n_ok < QC_MIN_SLIDES:
            verdict = (f"Intensity outliers are not computed: {n_ok} slide(s) with cells, at least "
                       f"{QC_MIN_SLIDES} are needed to compare a slide with its cohort.")
        elif flagged:
            verdict = (f'<strong class="flag">{len(flagged)} slide(s) flagged</strong> with a channel median more '
                       f"than {QC_Z_THRESHOLD:g} robust z from the cohort: {esc(', '.join(flagged))}.")
            for s in flagged:
                ctx.notes.slide("intensity QC flag", s)
        else:
            verdict = (f"No slide has a channel median more than {QC_Z_THRESHOLD:g} robust z from the cohort "
                       f"({n_ok} slides compared).")
        parts.append(
            "<p>Per channel, the median over a slide's cells of their mean raw intensity "
            "(cells.parquet <code>mean_&lt;channel&gt;</code>), and its robust z across slides: "
            "(value − cohort median) / (1.4826 × MAD). " + verdict + "</p>")
        parts.append(data_table(table, row_class=lambda r: "flagged" if r["flag"] else "", scroll=len(table) > 25))
    else:
        parts.append(not_available("no slide has a readable cells.parquet (cell counts and intensities)"))

    cards = []
    for info in slides:
        if info.paths.get("qc"):  # a single-cell collection: no image, its files' QC instead
            cards.append(_collection_card(info))
            continue
        if not info.paths:
            cards.append(f'<figure class="card"><figcaption><b>{esc(info.slide)}</b></figcaption>'
                         f'{not_available("no outputs for this slide")}</figure>')
            continue
        try:
            images = slide_images(info.paths, info.detail_centre)
        except (FileNotFoundError, ValueError, KeyError) as err:
            cards.append(f'<figure class="card"><figcaption><b>{esc(info.slide)}</b></figcaption>'
                         f"{not_available(str(err))}</figure>")
            ctx.notes.slide("no image for the QC thumbnail", info.slide)
            continue
        y0, y1, x0, x1 = images["detail_window"]
        count = "cells: –" if info.n_cells is None else f"{info.n_cells:,} cells"
        outline = "" if images["outlines"] else " · no labels.zarr: no outlines"
        tw = images["thumbnail"].shape[1]
        dw = 2 * images["detail"].shape[1]
        cards.append(
            f'<figure class="card"><div class="pair">'
            f'{img(rgb_uri(images["thumbnail"]), f"{info.slide} thumbnail", width=tw)}'
            f'{img(rgb_uri(images["detail"]), f"{info.slide} detail", width=dw, pixelated=True)}'
            f'</div><figcaption><b>{esc(info.slide)}</b> · {esc(info.patient)} · {esc(info.condition)} · '
            f"{esc(count)}<br>whole slide 1:{images['step']} · detail at full resolution "
            f"(y {y0}–{y1}, x {x0}–{x1}, shown 2×){esc(outline)}</figcaption></figure>")
    parts.append('<p class="legend">False colour: <span style="color:#4060ff">DAPI</span> blue, '
                 '<span style="color:#e03030">CK</span> red, <span style="color:#20a020">VIM</span> green, '
                 'CD45 grey; <span style="background:#222;color:#ffd900;padding:0 3px">segmentation outlines</span> '
                 "yellow. Detail crop: the 128 px square around the densest cells.</p>")
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    return "".join(parts)


def _collection_card(info) -> str:
    """A single-cell collection's card: its files' verdicts from qc.csv (hemoprofile.ingest.collection)."""
    head = f"<b>{esc(info.slide)}</b> · {esc(info.patient)} · {esc(info.condition)} · single-cell collection"
    try:
        qc = pd.read_csv(info.paths["qc"], dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        return f'<figure class="card"><figcaption>{head}</figcaption>{not_available(str(err))}</figure>'
    status = qc["status"].value_counts()
    skipped = qc[qc["status"] == "skipped"]
    problems = ", ".join(f"{p} {n}" for p, n in skipped["problem"].value_counts().items())
    line = (f"{len(qc):,} files: {int(status.get('ok', 0)):,} ok, {int(status.get('converted', 0)):,} converted, "
            f"{int(status.get('skipped', 0)):,} skipped" + (f" ({problems})" if problems else ""))
    listed = "".join(f"<li>{esc(r.path)}: {esc(r.problem)} — {esc(r.details)}</li>" for r in skipped.head(5).itertuples())
    more = f"<li>… {len(skipped) - 5} more in qc.csv</li>" if len(skipped) > 5 else ""
    return (f'<figure class="card"><figcaption>{head}<br>{esc(line)}'
            + (f"<ul>{listed}{more}</ul>" if listed else "") + "</figcaption></figure>")
