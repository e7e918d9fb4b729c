"""A small trained collection cohort for the serve tests: generated per-patient pbc8 cell-type counts, a
patient model trained on them with the package's training function, written in the workflow's layout
(``models/patient_model.pkl``, ``cohort/patient_model/metrics.json``)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

PBC8 = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
#: Mean composition per condition (AML-like shifts towards ig/monocytes or erythroblasts).
PROFILES = {
    "control": (0.01, 0.03, 0.01, 0.02, 0.30, 0.06, 0.55, 0.02),
    "aml_mono": (0.01, 0.02, 0.02, 0.20, 0.20, 0.30, 0.23, 0.02),
    "aml_ery": (0.01, 0.02, 0.30, 0.15, 0.22, 0.06, 0.22, 0.02),
}
FAST = {"cv_folds": 3, "cv_repeats": 1, "bootstrap": 50,
        "models": {"xgboost": {"n_estimators": 15}, "catboost": {"iterations": 20},
                   "random_forest": {"n_estimators": 20}, "mlp": {"max_iter": 300}}}
PBC_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pbc"


def count_table(per_condition: int = 8, cells: int = 300, seed: int = 0) -> pd.DataFrame:
    """One row per patient: patient, condition, n_cells, count_<type> and frac_<type> for the pbc8 types."""
    rng = np.random.default_rng(seed)
    rows = []
    for condition, mean in PROFILES.items():
        for i in range(per_condition):
            counts = rng.multinomial(cells, rng.dirichlet(np.asarray(mean) * 12))
            row = {"patient": f"{condition}_{i:02d}", "condition": condition, "n_cells": cells}
            row.update({f"count_{t}": int(c) for t, c in zip(PBC8, counts)})
            row.update({f"frac_{t}": c / cells for t, c in zip(PBC8, counts)})
            rows.append(row)
    return pd.DataFrame(rows)


def write_trained_cohort(results: Path, seed: int = 0) -> Path:
    """Train the patient model on :func:`count_table` and write it under ``results``; returns ``results``."""
    from hemoprofile.patients.prediction import save_model
    from hemoprofile.patients.table import feature_columns
    from hemoprofile.patients.training import train_two_stage

    table = count_table(seed=seed)
    result = train_two_stage(table, feature_columns(table), {**FAST, "control_label": "control"}, seed=seed)
    save_model(results / "models" / "patient_model.pkl", result.model)
    metrics = results / "cohort" / "patient_model" / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(result.metrics, indent=2))
    return results


def patient_folder(root: Path, extra_bad: bool = True) -> Path:
    """A patient's upload folder: the 18 PBC fixture crops (flat, no labels) plus, with ``extra_bad``,
    an empty .jpg, a text file and a macOS resource-fork file that is not an image."""
    folder = root / "patient_upload"
    folder.mkdir(parents=True)
    for path in sorted((PBC_FIXTURES / "images").rglob("*.jpg")):
        shutil.copy(path, folder / path.name)
    if extra_bad:
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "notes.txt").write_text("not an image")
        (folder / "._BNE_722116.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    return folder


def fixture_labels() -> dict[str, str]:
    """File name -> true label of the PBC fixture crops."""
    labels = pd.read_csv(PBC_FIXTURES / "labels.csv")
    return {Path(p).name: label for p, label in zip(labels["path"], labels["label"])}


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return out
