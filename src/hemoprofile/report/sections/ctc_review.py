"""Section ``ctc_review``: the CTC candidate threshold and how it was chosen (calibrate_ctc's JSON), the
reliability diagram of the calibrated CTC probability on the test patients, and the cohort CTC table
(candidates, reviewed CTCs, CTCs per million leukocytes with Garwood 95 % intervals) per patient."""

from __future__ import annotations

import json

import numpy as np

from hemoprofile.report.html import data_table, esc, figure_uri, fmt, img, kv_table, new_figure, not_available
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import have, try_read_table

PATIENT_COLUMNS = ["patient", "condition", "n_cells", "candidates", "reviewed_slides", "reviewed_ctc",
                   "reviewed_not_ctc", "unsure", "unreviewed", "ctc_count", "ctc_per_million",
                   "ctc_per_million_low", "ctc_per_million_high"]


def _calibration(path) -> str:
    if not have(path):
        return not_available(f"no CTC calibration ({path or 'ctc.candidate_threshold is a fixed number'})")
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as err:
        return not_available(f"{path}: not readable ({err})")
    val, test = result.get("validation") or {}, result.get("test") or {}

    def ci(block, key):
        low, high = block.get(f"{key}_ci95", [np.nan, np.nan])
        return f"{fmt(block.get(key))} ({fmt(low)}–{fmt(high)})"

    pairs = [("candidate threshold (p_ctc_CTC ≥)", fmt(result.get("threshold"), 4)),
             ("calibrated probability at the threshold", fmt(result.get("threshold_calibrated"), 3)),
             ("target: false candidates per million", fmt(result.get("max_false_per_million"))),
             ("calibration", esc(result.get("calibration", {}).get("method", ""))),
             ("validation patients (choose)", esc(", ".join(result.get("validation_patients", [])))),
             ("test patients (report)", esc(", ".join(result.get("test_patients", [])))),
             ("validation: non-CTC cells / false candidates", f"{fmt(val.get('n_negatives'))} / {fmt(val.get('false'))}"),
             ("test: non-CTC cells / CTCs", f"{fmt(test.get('n_negatives'))} / {fmt(test.get('n_ctc'))}"),
             ("test: false candidates per million (95 % CI)", ci(test, "false_per_million")),
             ("test: CTC recall (95 % CI)", ci(test, "recall"))]
    return kv_table(pairs) + f"<p>{esc(result.get('note', ''))}</p>"


def _reliability(path) -> str:
    curve, why = try_read_table(path, "reliability diagram")
    if curve is None:
        return not_available(why)
    fig = new_figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
    for kind, colour in (("raw", "#ff7f0e"), ("calibrated", "#1f77b4")):
        part = curve[(curve["probability"] == kind) & (curve["n"] > 0)]
        ax.plot(part["mean_predicted"], part["observed"], "o-", color=colour, label=kind, ms=4)
    ax.set_xlabel("predicted CTC probability")
    ax.set_ylabel("observed CTC fraction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return (f'<div class="row"><div>{img(figure_uri(fig), "reliability diagram", cls="fig")}</div><div>'
            f"{data_table(curve[curve['n'] > 0])}</div></div>")


def render(ctx: ReportContext) -> str:
    inputs = ctx.inputs
    if not any(have(p) for p in (inputs.ctc_table, inputs.ctc_calibration)):
        return not_available("no CTC review table given (the ctc classifier task was not run)")
    parts = ["<p>Cells whose CTC score passes the candidate threshold are the candidates a reviewer checks on "
             "each slide's <code>review.html</code>; a slide with a review CSV counts the cells marked CTC, "
             "others their candidates. Intervals are exact (Garwood) Poisson 95 % intervals.</p>",
             "<h3>Candidate threshold</h3>", _calibration(inputs.ctc_calibration),
             "<h3>Calibration on the test patients</h3>", _reliability(inputs.ctc_calibration_curve),
             "<h3>CTCs per patient</h3>"]
    table, why = try_read_table(inputs.ctc_table, "CTC review table")
    if table is None:
        parts.append(not_available(why))
    else:
        patients = table[table["level"] == "patient"]
        parts.append(f"<p>{int(patients['candidates'].sum()):,} candidates in {int((table['level'] == 'slide').sum())} "
                     f"slides; {int(patients['reviewed_slides'].sum())} slide(s) reviewed; "
                     f"{int(patients['ctc_count'].sum()):,} CTCs counted.</p>")
        parts.append(data_table(patients[[c for c in PATIENT_COLUMNS if c in patients]], scroll=True))
    return "".join(parts)
