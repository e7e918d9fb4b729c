"""Section ``patients``: patient-level predictions with probabilities (and the simulated truth of a
synthetic cohort), cross-validated metrics per stage with 95% confidence intervals, per-model metrics,
confusion matrices, out-of-fold predictions, the patient table's key columns and its column glossary."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from hemoprofile.io.tables import read_table
from hemoprofile.report.html import confusion_table, data_table, esc, fmt, kv_table, not_available
from hemoprofile.report.inputs import ReportContext, ReportInputs, condition_text
from hemoprofile.report.readers import have, try_read_json, try_read_table


def _metric_cell(value) -> tuple[float | None, str]:
    """A metric given as a number or {"value", "ci95": [lo, hi]} -> (value, 'v [lo, hi]')."""
    if isinstance(value, Mapping):
        v = value.get("value")
        ci = value.get("ci95")
        text = fmt(v)
        if ci is not None and len(ci) == 2:
            text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
        return v, text
    return value, fmt(value)


_METRIC_NAMES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
                 ("roc_auc", "ROC AUC"))


def _metric_texts(metrics: Mapping) -> dict[str, str]:
    """Display name -> 'v [lo, hi]' of each of :data:`_METRIC_NAMES` ('–' where missing)."""
    return {name: _metric_cell(metrics[key])[1] if key in metrics else "–" for key, name in _METRIC_NAMES}


def _true_conditions(path: str | None) -> dict[str, str]:
    """patient -> simulated condition from a synthetic cohort's truth_cells.parquet ({} without one)."""
    if not have(path):
        return {}
    try:
        truth = read_table(path, ["patient", "condition"]).drop_duplicates("patient")
        return dict(zip(truth["patient"].astype(str), truth["condition"].astype(str)))
    except Exception:  # an unreadable truth table (or one without these columns) only loses this column
        return {}


def _predictions(pred: pd.DataFrame, inputs: ReportInputs) -> str:
    sheet = inputs.samples.drop_duplicates("patient") if "patient" in inputs.samples else None
    if sheet is not None and "condition" in sheet and "condition" not in pred:
        conditions = dict(zip(sheet["patient"].astype(str), sheet["condition"].map(condition_text)))
        pred.insert(1, "condition (sheet)", pred["patient"].astype(str).map(conditions))
    truth = _true_conditions(inputs.truth_cells)
    if truth:
        pred.insert(2, "condition (simulated truth)", pred["patient"].astype(str).map(truth))
    return ("<p>Each patient's predicted state, with the model's probabilities (two stages: disease vs "
            "control, then the disease subtype).</p>" + data_table(pred, scroll=len(pred) > 25))


def _cv_metrics(data: dict) -> str:
    features = data.get("features")
    n_features = len(features) if isinstance(features, (list, tuple)) else features
    parts = [kv_table([("patients (labelled)", data.get("n_patients")),
                       ("patients without a label", data.get("n_unlabelled")),
                       ("features", n_features), ("seed", data.get("seed"))])]
    stages = data.get("stages") or {}
    rows, per_model, matrices = [], [], []
    for stage, block in stages.items():
        cv = block.get("cv") or {}
        row = {"stage": stage, "classes": ", ".join(map(str, block.get("classes", []))),
               "patients": block.get("n_patients"),
               "CV": (f"{cv.get('folds')} folds × {cv.get('repeats')} repeats" if cv else "–"),
               **_metric_texts(block.get("metrics") or {})}
        skipped = [f"{what} skipped in {cv[key]} folds" for key, what in
                   (("smote_skipped_folds", "SMOTE"), ("stacking_skipped_folds", "stacking")) if cv.get(key)]
        if skipped:
            row["CV"] += f" ({'; '.join(skipped)})"
        rows.append(row)
        per_model += [{"stage": stage, "model": model, **_metric_texts(mm)}
                      for model, mm in (block.get("per_model") or {}).items()]
        if "confusion_matrix" in block and block.get("classes"):
            matrices.append(f"<div><h4>{esc(stage)}</h4>"
                            f"{confusion_table(block['confusion_matrix'], block['classes'])}</div>")
    if rows:
        parts.append("<p>Out-of-fold estimates over repeated stratified cross-validation, with 95% confidence "
                     "intervals in brackets. Stage <i>disease</i> separates disease from control, <i>subtype</i> "
                     "the disease subtypes, <i>overall</i> scores the final state of every patient.</p>")
        parts.append(data_table(pd.DataFrame(rows), sortable=False, nowrap=True))
    else:
        parts.append(not_available("the metrics list no stages"))
    if per_model:
        parts.append("<h4>Per model</h4>" + data_table(pd.DataFrame(per_model), nowrap=True))
    if matrices:
        parts.append("<h4>Confusion matrices (patients, out of fold)</h4>"
                     f'<div class="row">{"".join(matrices)}</div>')
    return "".join(parts)


def _out_of_fold(oof: pd.DataFrame) -> str:
    wrong = 0
    if {"condition", "predicted_state"} <= set(oof.columns):
        wrong = int((oof["condition"].astype(str) != oof["predicted_state"].astype(str)).sum())
    return (f"<details><summary>{len(oof)} patients, {wrong} misclassified (highlighted)</summary>"
            + data_table(oof, scroll=len(oof) > 25,
                         row_class=lambda r: "flagged" if "predicted_state" in r and "condition" in r
                         and str(r["condition"]) != str(r["predicted_state"]) else "")
            + "</details>")


def _patient_table(table: pd.DataFrame) -> str:
    key = [c for c in ("patient", "condition", "modality", "n_slides", "n_cells", "n_leukocytes", "ctc_count",
                       "ctc_per_1000", "ctc_leukocyte_clusters") if c in table.columns]
    return (f"<p>{len(table)} patients × {table.shape[1]} columns (the features of the patient model); "
            "key columns:</p>" + data_table(table[key], scroll=len(table) > 25))


def render(ctx: ReportContext) -> str:
    inputs = ctx.inputs
    parts, available = [], 0
    for title, read, path, what, show in (
            ("Predictions", try_read_table, inputs.patient_predictions, "patient predictions",
             lambda pred: _predictions(pred, inputs)),
            ("Cross-validated metrics", try_read_json, inputs.patient_metrics, "patient model metrics", _cv_metrics),
            ("Out-of-fold predictions", try_read_table, inputs.patient_oof, "out-of-fold predictions", _out_of_fold),
            ("Patient table", try_read_table, inputs.patients, "patient table", _patient_table)):
        parts.append(f"<h3>{title}</h3>")
        data, why = read(path, what)
        if data is None:
            parts.append(not_available(why))
        else:
            available += 1
            parts.append(show(data))
    glossary, _ = try_read_table(inputs.patient_columns, "patient column glossary")
    if glossary is not None:
        parts.append(f"<details><summary>What each of the {len(glossary)} columns means</summary>"
                     f"{data_table(glossary, scroll=len(glossary) > 25)}</details>")
    if available == 0:
        return not_available("none of the patient-level outputs exists (the aggregate and patient model "
                             "stages have not run)")
    return "".join(parts)
