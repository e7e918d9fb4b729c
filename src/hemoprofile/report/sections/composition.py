"""Section ``composition``: predicted cell-type composition per patient (fractions of leukocytes, stacked
bars) and a table with counts and CTCs per 1000 leukocytes; from the slides' predictions, else from the
patient table's ``count_<type>`` columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hemoprofile.report.html import data_table, esc, figure_uri, img, new_figure, not_available, palette
from hemoprofile.report.inputs import ReportContext, condition_text
from hemoprofile.report.readers import try_read_table


#: Display order of cell types (classify's task classes, coarse after fine); others follow by name.
_TYPE_DISPLAY_ORDER = ("CD4_T", "CD8_T", "T", "B", "NK", "granulocyte", "monocyte", "lymphoid", "myeloid",
                       "leukocyte")


def _type_order(types: Sequence[str]) -> list[str]:
    known = list(_TYPE_DISPLAY_ORDER)
    return sorted(set(types), key=lambda t: (t == "CTC", known.index(t) if t in known else len(known), t))


def _composition_frame(ctx: ReportContext) -> tuple[pd.DataFrame | None, str]:
    """Per patient: condition, slides, cells and counts per type; from predictions, else patients.parquet."""
    typed = [s for s in ctx.slides if s.type_counts is not None]
    if typed:
        rows: dict[str, dict] = {}
        for s in ctx.slides:
            row = rows.setdefault(s.patient, {"patient": s.patient, "condition": s.condition, "slides": 0,
                                              "cells": 0, "counts": {}})
            row["slides"] += 1
            row["cells"] += s.n_cells or 0
            for t, n in (s.type_counts or {}).items():
                row["counts"][t] = row["counts"].get(t, 0) + n
        types = _type_order([t for r in rows.values() for t in r["counts"]])
        frame = pd.DataFrame([{**{k: v for k, v in r.items() if k != "counts"},
                               **{t: r["counts"].get(t, 0) for t in types}} for r in rows.values()])
        tasks = sorted({s.type_task for s in typed if s.type_task})
        return frame, (f"Cell types from the '{', '.join(tasks)}' classifier predictions (predictions.parquet), "
                       "CTC where the ctc classifier says so.")
    table, why = try_read_table(ctx.inputs.patients, "patient table")
    if table is not None and any(c.startswith("count_") for c in table.columns):
        types = _type_order([c[len("count_"):] for c in table.columns if c.startswith("count_")])
        frame = pd.DataFrame({"patient": table["patient"].astype(str),
                              "condition": [condition_text(c) for c in table.get("condition", [None] * len(table))],
                              "slides": table.get("n_slides", np.nan), "cells": table.get("n_cells", np.nan)})
        for t in types:
            frame[t] = table[f"count_{t}"].to_numpy()
        return frame, "Cell types from the patient table (patients.parquet count_<type> columns)."
    return None, "no slide has predictions.parquet with cell-type predictions, and no patient table with count_ columns"


def render(ctx: ReportContext) -> str:
    frame, source = _composition_frame(ctx)
    if frame is None:
        return not_available(source)
    frame = frame.sort_values(["condition", "patient"]).reset_index(drop=True)
    types = [c for c in frame.columns if c not in ("patient", "condition", "slides", "cells")]
    leuk_types = [t for t in types if t != "CTC"]
    leukocytes = frame[leuk_types].sum(axis=1).to_numpy(np.float64) if leuk_types else np.zeros(len(frame))
    fractions = frame[leuk_types].to_numpy(np.float64) / np.where(leukocytes > 0, leukocytes, np.nan)[:, None]

    fig = new_figure(min(max(4.5, 0.32 * len(frame) + 2.5), 13), 3.6)
    ax = fig.add_subplot()
    colours = palette(len(leuk_types))
    bottom = np.zeros(len(frame))
    x = np.arange(len(frame))
    for i, t in enumerate(leuk_types):
        values = np.nan_to_num(fractions[:, i])
        ax.bar(x, values, bottom=bottom, color=colours[i], width=0.8, label=t)
        bottom += values
    ax.set_xticks(x, frame["patient"], rotation=90 if len(frame) > 12 else 0, fontsize=8)
    ax.set_ylabel("fraction of leukocytes")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(frame) - 0.4)
    for condition, idx in frame.groupby("condition").groups.items():
        lo, hi = min(idx), max(idx)
        ax.annotate(str(condition), ((lo + hi) / 2, 1.01), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=8)
        if lo > 0:
            ax.axvline(lo - 0.5, color="black", lw=0.8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    chart = img(figure_uri(fig), "cell-type composition per patient", cls="fig")

    table = frame[["patient", "condition", "slides", "cells"]].copy()
    table["leukocytes"] = leukocytes.astype(np.int64)
    for i, t in enumerate(leuk_types):
        table[f"% {t}"] = 100 * fractions[:, i]
    if "CTC" in types:
        table["CTC"] = frame["CTC"].to_numpy()
        table["CTC per 1000 leukocytes"] = 1000 * frame["CTC"].to_numpy() / np.where(leukocytes > 0, leukocytes, np.nan)
    return (f"<p>{esc(source)} Bars: each patient's leukocytes (every cell not predicted CTC), pooled over the "
            f"patient's slides; CTCs are counted in the table.</p>{chart}"
            f"{data_table(table, scroll=len(table) > 25)}")
