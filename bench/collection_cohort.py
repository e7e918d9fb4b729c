"""Patient-level figures of the collection demo cohort (issue 18): the two-stage ensemble against each of
its single models, cross-validated with 95 % bootstrap intervals, and the cell-level accuracy of the
bundled pbc8 classifier on the demo's crops.

Reads what ``snakemake --configfile config/collections.yaml`` wrote under ``--results`` (default
``results/collections``): ``cohort/patients.parquet`` (the patient table), ``cohort/patient_model/
metrics.json`` (the workflow's settings and seed, and its ensemble figures), each patient's
``predictions.parquet`` + ``cells.parquet`` and the generator's ``collection_demo/<patient>/truth.csv``.

The single models come from the *same* cross-validation as the ensemble: the patient model's own
cross-validation function (:mod:`hemoprofile.patients.training`, one code path) is run once per stage with
the workflow's settings and seed; it returns every member's out-of-fold probabilities next to the
ensemble's, and each gets the same bootstrap (:func:`hemoprofile.patients.evaluation.with_ci`). The
ensemble's figures are checked against the workflow's metrics.json.

For orientation only, the AML seed study's published accuracies (0.921 control vs AML, 0.50 subtype) are
printed beside them: that study classified real patients' smear cells (with blasts) from its own cohort;
the demo re-samples PBC crops of healthy donors' cells with an AML-like composition shift we chose, so
the numbers are not comparable and the demo's are as easy or hard as that shift makes them.

Usage::

    PYTHONPATH=src .venv/bin/python bench/collection_cohort.py [--results results/collections]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hemoprofile.patients.ensemble import DISEASE, MODEL_NAMES
from hemoprofile.patients.evaluation import with_ci
from hemoprofile.patients.settings import resolve_settings
from hemoprofile.patients.table import feature_columns, feature_matrix, labelled_mask
from hemoprofile.patients.training import _cross_validate, _stage_data

PUBLISHED = {"disease": 0.921, "subtype": 0.50}  # the AML seed study's accuracies (its own, different data)


def _fmt(m: dict, key: str) -> str:
    block = m[key]
    lo, hi = block["ci95"] or (np.nan, np.nan)
    return f"{block['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def patient_figures(results: Path) -> tuple[pd.DataFrame, dict]:
    table = pd.read_parquet(results / "cohort" / "patients.parquet")
    workflow_metrics = json.loads((results / "cohort" / "patient_model" / "metrics.json").read_text())
    settings = resolve_settings(workflow_metrics["settings"])
    seed = int(workflow_metrics["seed"])
    features = feature_columns(table)
    labelled = labelled_mask(table)
    X = feature_matrix(table, features, "bench")[labelled]
    conditions = table["condition"][labelled].astype(str).str.strip().to_numpy()
    patients = table["patient"][labelled].to_numpy()
    control = settings["control_label"]
    subtypes = sorted(set(conditions) - {control})
    is_disease = conditions != control
    stages = {
        "disease": _stage_data("disease", X, np.where(is_disease, DISEASE, control), [control, DISEASE], patients, ""),
        "subtype": _stage_data("subtype", X[is_disease], conditions[is_disease], subtypes, patients[is_disease], ""),
    }
    rows = []
    for i, (name, data) in enumerate(stages.items()):
        cv = _cross_validate(data, settings, seed)
        for model in ["ensemble", *MODEL_NAMES]:
            p = cv.model_oof[model]
            # the workflow seeds stage i's bootstrap with default_rng([seed, i]); the same for every model
            m = with_ci(data.y, p, p.argmax(axis=1), True, settings["bootstrap"], np.random.default_rng([seed, i]))
            rows.append({"stage": name, "model": model, "n": len(data.y), "accuracy": _fmt(m, "accuracy"),
                         "balanced_accuracy": _fmt(m, "balanced_accuracy"), "macro_f1": _fmt(m, "macro_f1"),
                         "roc_auc": f"{m['roc_auc']['value']:.3f}" if m["roc_auc"]["value"] is not None else "n/a",
                         "_acc": m["accuracy"]["value"]})
        ours = rows[-len(MODEL_NAMES) - 1]["_acc"]
        theirs = workflow_metrics["stages"][name]["metrics"]["accuracy"]["value"]
        if abs(ours - theirs) > 1e-12:
            raise SystemExit(f"stage {name}: ensemble accuracy {ours} differs from the workflow's {theirs}")
    return pd.DataFrame(rows).drop(columns="_acc"), workflow_metrics


def cell_accuracy(results: Path) -> tuple[float, int, pd.DataFrame]:
    """pbc8's predictions on the demo crops against the class each crop was drawn from."""
    right = total = 0
    confusion = {}
    for truth_csv in sorted((results / "collection_demo").glob("*/truth.csv")):
        patient = truth_csv.parent.name
        truth = pd.read_csv(truth_csv).set_index("file")["class"]
        cells = pd.read_parquet(results / patient / "cells.parquet", columns=["cell_id", "path"])
        pred = pd.read_parquet(results / patient / "predictions.parquet", columns=["cell_id", "pred_collection"])
        merged = cells.merge(pred, on="cell_id")
        merged["truth"] = merged["path"].map(truth)
        merged = merged.dropna(subset=["truth"])
        right += int((merged["truth"] == merged["pred_collection"]).sum())
        total += len(merged)
        for (t, p), n in merged.groupby(["truth", "pred_collection"]).size().items():
            confusion[(t, p)] = confusion.get((t, p), 0) + int(n)
    matrix = pd.Series(confusion).unstack(fill_value=0) if confusion else pd.DataFrame()
    return right / max(total, 1), total, matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/collections"))
    args = parser.parse_args()
    started = time.perf_counter()
    acc, n, matrix = cell_accuracy(args.results)
    print(f"cell level: pbc8 accuracy {acc:.4f} on {n} demo crops (truth: the class each crop was drawn from)")
    if len(matrix):
        print(matrix.to_string())
    figures, metrics = patient_figures(args.results)
    s = metrics["settings"]
    print(f"\npatient level: {metrics['n_patients']} patients, {len(metrics['features'])} features; "
          f"{s['cv_folds']}-fold x {s['cv_repeats']} repeated stratified CV (SMOTE inside folds), "
          f"95 % bootstrap CI over patients ({s['bootstrap']} resamples), seed {metrics['seed']}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(figures.to_string(index=False))
    overall = metrics["stages"]["overall"]["metrics"]
    print(f"\nend to end (control / subtype state, ensemble): accuracy {_fmt(overall, 'accuracy')}, "
          f"balanced accuracy {_fmt(overall, 'balanced_accuracy')}")
    print(f"orientation only (different data): AML seed study, published accuracy {PUBLISHED['disease']} control "
          f"vs AML, {PUBLISHED['subtype']} subtype")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
