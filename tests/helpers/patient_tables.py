"""Patient tables with known truth and fast patient-model settings (shared by the patient-model tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemoprofile.patients.table import feature_columns
from hemoprofile.patients.training import train_two_stage

# Small models: each train_two_stage call takes about a second on one core.
FAST = {"cv_folds": 3, "cv_repeats": 2, "bootstrap": 200,
        "models": {"xgboost": {"n_estimators": 25}, "catboost": {"iterations": 40},
                   "random_forest": {"n_estimators": 40}, "mlp": {"max_iter": 300}}}


def make_table(n_control=10, n_a=10, n_b=10, n_unlabelled=3, n_features=12, shift=2.5, seed=0, learnable=True):
    """Patients with known truth: disease shifts f0-f2 up, disease_a shifts f3 up, disease_b f4 down.
    Unlabelled patients are drawn like disease_a. ``learnable=False``: every feature is pure noise."""
    rng = np.random.default_rng(seed)
    cond = np.array(["control"] * n_control + ["disease_a"] * n_a + ["disease_b"] * n_b + ["unknown"] * n_unlabelled)
    X = rng.normal(size=(len(cond), n_features))
    if learnable:
        sick = cond != "control"
        X[sick, :3] += shift
        X[(cond == "disease_a") | (cond == "unknown"), 3] += shift
        X[cond == "disease_b", 4] -= shift
    table = pd.DataFrame(X, columns=[f"f{i}" for i in range(n_features)])
    table.insert(0, "condition", cond)
    table.insert(0, "patient", [f"P{i:03d}" for i in range(len(cond))])
    table.insert(2, "n_slides", 1)
    return table


def train(table, settings=None, seed=0):
    """train_two_stage with the FAST settings (``settings`` overrides top-level keys)."""
    return train_two_stage(table, feature_columns(table), {**FAST, **(settings or {})}, seed=seed)
