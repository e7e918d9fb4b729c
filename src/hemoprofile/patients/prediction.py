"""Scoring patients with a trained two-stage model, and the model file (joblib, with its format and
the library versions it was trained with)."""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.exceptions import InconsistentVersionWarning
from threadpoolctl import threadpool_limits

from hemoprofile.io import atomic_output
from hemoprofile.patients.ensemble import (
    StageModel,
    TwoStageModel,
    decide,
    joint_probabilities,
    library_versions,
)
from hemoprofile.patients.table import feature_matrix

MODEL_FORMAT = "hemoprofile-patient-model"
MODEL_FORMAT_VERSION = 1

#: Modules that model files written before the package layout name the model classes by; the pickles
#: say ``hemoprofile.patient_model.StageModel``, now :class:`~hemoprofile.patients.ensemble.StageModel`.
_FORMER_MODULES = ("hemoprofile.patient_model",)


def predict_two_stage(model: TwoStageModel, table: pd.DataFrame) -> pd.DataFrame:
    """Score every row of ``table`` (labelled or not) with the final ensembles.

    Parameters
    ----------
    model : TwoStageModel
    table : pandas.DataFrame
        ``patient`` and the model's feature columns (others are ignored; NaN allowed).

    Returns
    -------
    pandas.DataFrame
        ``patient, p_disease, predicted_disease`` (p_disease > 0.5), ``p_<subtype>`` (probability given
        disease) for each subtype, ``predicted_subtype``, ``predicted_state`` (the control label or the
        subtype) and ``p_state_<state>`` (joint probability of each final state; they sum to 1).

    Raises
    ------
    ValueError
        A feature column is missing (named) or not numeric, or there is no ``patient`` column.
    """
    if "patient" not in table.columns:
        raise ValueError(f"predict_two_stage: no 'patient' column (columns: {', '.join(map(str, table.columns))})")
    X = feature_matrix(table, model.features, "predict_two_stage")
    with threadpool_limits(limits=model.settings["threads"]):
        p_disease = model.disease.predict_proba(X)[:, 1]
        p_sub = model.subtype.predict_proba(X)
    states = model.states
    out = pd.DataFrame({"patient": table["patient"].to_numpy(), "p_disease": p_disease,
                        "predicted_disease": p_disease > 0.5})
    for j, s in enumerate(model.subtypes):
        out[f"p_{s}"] = p_sub[:, j]
    out["predicted_subtype"] = np.asarray(model.subtypes, dtype=object)[p_sub.argmax(axis=1)]
    out["predicted_state"] = np.asarray(states, dtype=object)[decide(p_disease, p_sub)]
    joint = joint_probabilities(p_disease, p_sub)
    for j, s in enumerate(states):
        out[f"p_state_{s}"] = joint[:, j]
    return out


def save_model(path: str | os.PathLike, model: TwoStageModel) -> None:
    """Write ``model`` with joblib (atomically), with the format and the library versions.

    Parameters
    ----------
    path : path-like
    model : TwoStageModel
    """
    payload = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "versions": library_versions(),
               "model": model}
    with atomic_output(path) as tmp:
        joblib.dump(payload, tmp)


def load_model(path: str | os.PathLike) -> TwoStageModel:
    """Read a model written by :func:`save_model`.

    Warns (:class:`UserWarning`) when it was saved with other versions of scikit-learn, xgboost,
    catboost or imbalanced-learn than the ones installed: the model may still load and predict, but its
    numbers are not guaranteed to match.

    Raises
    ------
    ValueError
        Naming ``path`` when the file is missing, unreadable or not a patient model.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"patient model {path}: no such file")
    try:
        with warnings.catch_warnings(), _former_module_names():
            # scikit-learn's own unpickling warning; the comparison below says the same for every library.
            warnings.filterwarnings("ignore", category=InconsistentVersionWarning)
            payload = joblib.load(path)
    except Exception as exc:  # a truncated or foreign file fails in many ways
        raise ValueError(f"patient model {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"patient model {path}: not a {MODEL_FORMAT} file")
    if payload.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"patient model {path}: format version {payload.get('format_version')}, "
                         f"this code reads {MODEL_FORMAT_VERSION}")
    saved = payload.get("versions", {})
    now = library_versions()
    differ = [f"{lib} {saved.get(lib)} (installed {now[lib]})"
              for lib in ("scikit-learn", "xgboost", "catboost", "imbalanced-learn") if saved.get(lib) != now[lib]]
    if differ:
        warnings.warn(f"patient model {path} was saved with other library versions: {', '.join(differ)}; "
                      "predictions may differ from the ones it was validated with", UserWarning, stacklevel=2)
    return payload["model"]


@contextmanager
def _former_module_names() -> Iterator[None]:
    """While loading, let :data:`_FORMER_MODULES` name the model classes, so earlier files still load."""
    alias = types.ModuleType(_FORMER_MODULES[0])
    alias.StageModel, alias.TwoStageModel = StageModel, TwoStageModel
    added = [name for name in _FORMER_MODULES if name not in sys.modules]
    for name in added:
        sys.modules[name] = alias
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)
