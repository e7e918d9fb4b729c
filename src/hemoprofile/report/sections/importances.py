"""Section ``importances``: the top feature importances per stage of the patient model (bar charts and a
table with each feature's description from the patient column glossary)."""

from __future__ import annotations

import numpy as np

from hemoprofile.report.html import data_table, esc, figure_uri, img, new_figure, not_available
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import try_read_table

TOP_FEATURES = 15


def render(ctx: ReportContext) -> str:
    imp, why = try_read_table(ctx.inputs.patient_importances, "feature importances")
    if imp is None:
        return not_available(why)
    needed = {"stage", "feature", "model", "importance"}
    if not needed <= set(imp.columns):
        return not_available(f"{ctx.inputs.patient_importances} lacks column(s) {sorted(needed - set(imp.columns))}")
    if len(imp) == 0:
        return not_available("the importances table is empty")
    glossary, _ = try_read_table(ctx.inputs.patient_columns, "patient column glossary")
    meaning = dict(zip(glossary["column"], glossary["description"])) if glossary is not None and {
        "column", "description"} <= set(glossary.columns) else {}
    parts = ["<p>Importances of the patient model's features, per stage: the ensemble's (the mean over its "
             f"models, each scaled to sum 1) top {TOP_FEATURES}.</p>"]
    for stage, block in imp.groupby("stage", sort=False):
        wide = block.pivot_table(index="feature", columns="model", values="importance", aggfunc="mean")
        score = wide["ensemble"] if "ensemble" in wide else wide.mean(axis=1)
        top = score.sort_values(ascending=False).head(TOP_FEATURES)
        fig = new_figure(6.5, 0.28 * len(top) + 1.0)
        ax = fig.add_subplot()
        ax.barh(np.arange(len(top))[::-1], top.to_numpy(), color="#1f77b4")
        ax.set_yticks(np.arange(len(top))[::-1], [str(f) for f in top.index], fontsize=8)
        ax.set_xlabel("importance (ensemble)" if "ensemble" in wide else "importance (mean over models)")
        ax.set_title(f"stage: {stage}", fontsize=10)
        table = wide.loc[top.index].reset_index()
        table.insert(1, "description", [meaning.get(f, "") for f in top.index])
        parts.append(f"<h3>{esc(stage)}</h3><div class=\"row\"><div>"
                     f"{img(figure_uri(fig), f'importances {stage}', cls='fig')}</div><div>"
                     f"{data_table(table)}</div></div>")
    return "".join(parts)
