"""Patient-level two-stage ensemble: control vs disease, then the disease subtype.

Input is the patient table (:mod:`hemoprofile.aggregate`): one row per patient, a ``patient`` id, a
``condition`` label and numeric features (NaN allowed). Rows whose condition is empty, NaN or
``unknown`` are *unlabelled*: never trained on, never scored in the metrics, but scored by
:func:`predict_two_stage`.

Design
------
Two stages
    Stage ``disease`` separates ``control`` (``settings["control_label"]``) from every other label
    (``disease``); stage ``subtype`` is trained on the disease patients only and says which subtype
    (which non-control label) a patient has. The final state of a patient is the control label when
    ``p_disease <= 0.5``, else the most probable subtype; the joint probability of a state is
    ``p_state_<control> = 1 - p_disease`` and ``p_state_<subtype> = p_disease * p(subtype | disease)``.
Ensemble per stage
    XGBoost, CatBoost, a random forest and an MLP (:class:`~sklearn.neural_network.MLPClassifier`,
    L-BFGS, behind a :class:`~sklearn.preprocessing.StandardScaler`). Every model sits behind median
    imputation (fitted on its training rows; a feature with no value at all is filled with 0) because
    SMOTE cannot interpolate NaNs; the tree models' native NaN handling is therefore not used. The
    ensemble is *soft voting*, the mean of the four models' class probabilities, or, with
    ``settings["stacking"]``, a logistic regression on the four models' out-of-fold probabilities.
SMOTE inside the folds
    Each model is an :class:`imblearn.pipeline.Pipeline` (impute -> SMOTE -> [scale] -> model): the
    sampler runs in ``fit`` only, on the training rows of a fold, and never on the rows that fold
    evaluates; prediction goes through the pipeline without resampling. ``k_neighbors`` is
    ``min(k, n_smallest_class_in_fold - 1)``; where that is below 1 the fold trains without SMOTE and is
    counted (``smote_skipped_folds``).
Cross-validation
    One row is one patient, so :class:`~sklearn.model_selection.RepeatedStratifiedKFold` over rows is
    a split by patient; ``n_splits = min(cv_folds, smallest class count)``, ``cv_repeats`` repeats,
    seeded. Out-of-fold (OOF) probabilities are averaged over the repeats per patient. Stage ``subtype``
    is cross-validated on the disease patients; its fold models also score the control patients (never
    in its training rows), which the end-to-end ``overall`` evaluation needs for a control that stage
    ``disease`` calls diseased. With stacking, each outer fold fits the logistic regression on an inner
    cross-validation of its own training rows (nested), so the evaluation rows never reach it either.
Confidence intervals
    95 % percentile bootstrap over patients: the OOF predictions are resampled with replacement
    (``bootstrap`` times, seeded) and every metric is recomputed. Resamples without every class are
    skipped for ROC AUC and counted (``skipped_resamples``).
Final models
    Each stage's four pipelines are refitted on all its labelled patients (SMOTE included, which is
    training); the stacker, if any, on the OOF probabilities. Importances come from these models.

Everything is seeded (every model, SMOTE, the splits, the bootstrap) and single-threaded by default
(``threads``), so two runs on the same table with the same settings and seed give identical metrics,
OOF tables, importances and predictions.

Example
-------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> table = pd.DataFrame({"patient": [f"P{i}" for i in range(12)],
...                       "condition": ["control"] * 4 + ["disease_a"] * 4 + ["disease_b"] * 4,
...                       "f1": rng.normal(size=12), "f2": rng.normal(size=12)})
>>> settings = resolve_settings({"cv_folds": 2, "cv_repeats": 1, "bootstrap": 20, "models": {
...     "xgboost": {"n_estimators": 5}, "catboost": {"iterations": 5},
...     "random_forest": {"n_estimators": 5}, "mlp": {"max_iter": 500}}})
>>> result = train_two_stage(table, feature_columns(table), settings, seed=0)
>>> result.metrics["stages"]["disease"]["class_counts"]
{'control': 4, 'disease': 8}
>>> list(predict_two_stage(result.model, table.head(2)).columns)  # doctest: +NORMALIZE_WHITESPACE
['patient', 'p_disease', 'predicted_disease', 'p_disease_a', 'p_disease_b', 'predicted_subtype',
 'predicted_state', 'p_state_control', 'p_state_disease_a', 'p_state_disease_b']
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import catboost
import imblearn
import joblib
import numpy as np
import pandas as pd
import sklearn
import xgboost
from catboost import CatBoostClassifier
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from scipy.stats import rankdata
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from hemoprofile.io import atomic_output

log = logging.getLogger(__name__)

MODEL_FORMAT = "hemoprofile-patient-model"
MODEL_FORMAT_VERSION = 1

#: Settings of the patient model (config section ``patient_model``); see :func:`resolve_settings`.
DEFAULT_SETTINGS: dict = {
    "control_label": "control",
    "cv_folds": 5,
    "cv_repeats": 3,
    "bootstrap": 1000,
    "threads": 1,
    "smote": {"enabled": True, "k_neighbors": 3},
    "models": {
        "xgboost": {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.1},
        "catboost": {"iterations": 300, "depth": 4, "learning_rate": 0.05},
        "random_forest": {"n_estimators": 300, "min_samples_leaf": 1},
        "mlp": {"hidden": [32], "alpha": 0.001, "max_iter": 2000},
    },
    "stacking": False,
}

#: The ensemble's models, in the order they appear in metrics and importances.
MODEL_NAMES = ("xgboost", "catboost", "random_forest", "mlp")
#: Stage names, in order.
STAGES = ("disease", "subtype")
#: Name of the positive class of stage ``disease``.
DISEASE = "disease"
#: Condition values (after stripping, case-insensitive) that mark an unlabelled patient; NaN too.
UNLABELLED = ("", "unknown")
#: Columns of the patient table that are never features: identity, and counts that scale with how much
#: blood was imaged (slides x cells) rather than with the patient's biology; their normalised forms
#: (``frac_<type>``, ``ctc_per_1000``, ``cell_clusters_per_1000``, ...) are features.
NON_FEATURE_COLUMNS = frozenset({"patient", "condition", "n_slides", "n_cells", "n_leukocytes", "ctc_count",
                                 "cell_clusters", "ctc_leukocyte_clusters"})
#: Column prefixes that are never features (absolute per-type cell counts, see above).
NON_FEATURE_PREFIXES = ("count_",)

_MODEL_PARAMS = {
    "xgboost": {"n_estimators": "int", "max_depth": "int", "learning_rate": "positive"},
    "catboost": {"iterations": "int", "depth": "int", "learning_rate": "positive"},
    "random_forest": {"n_estimators": "int", "min_samples_leaf": "int"},
    "mlp": {"hidden": "int_list", "alpha": "non_negative", "max_iter": "int"},
}
_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_PERMUTATION_REPEATS = 5


# ---------------------------------------------------------------------------------------------------
# Settings


def resolve_settings(cfg: Mapping | None) -> dict:
    """Complete patient-model settings: ``cfg`` deep-merged over :data:`DEFAULT_SETTINGS`, validated.

    Parameters
    ----------
    cfg : mapping or None
        The config section ``patient_model`` (any subset of :data:`DEFAULT_SETTINGS`' keys, at any depth).

    Returns
    -------
    dict
        A new dict; :data:`DEFAULT_SETTINGS` is not modified.

    Raises
    ------
    ValueError
        Naming the key (``patient_model.<path>``) that is unknown or has a bad value.

    Example
    -------
    >>> s = resolve_settings({"cv_folds": 3, "models": {"xgboost": {"max_depth": 2}}})
    >>> s["cv_folds"], s["models"]["xgboost"], s["models"]["mlp"]["hidden"]
    (3, {'n_estimators': 200, 'max_depth': 2, 'learning_rate': 0.1}, [32])
    >>> resolve_settings({"smote": {"k": 2}})
    Traceback (most recent call last):
    ...
    ValueError: patient_model.smote.k: unknown key; allowed: enabled, k_neighbors
    """
    out = copy.deepcopy(DEFAULT_SETTINGS)
    _merge(out, {} if cfg is None else cfg, "patient_model")
    where = "patient_model"
    if not isinstance(out["control_label"], str) or not out["control_label"].strip():
        raise ValueError(f"{where}.control_label: must be a non-empty string, got {out['control_label']!r}")
    out["control_label"] = out["control_label"].strip()
    _check_int(out, "cv_folds", 2, where)
    _check_int(out, "cv_repeats", 1, where)
    _check_int(out, "bootstrap", 0, where)
    _check_int(out, "threads", 1, where)
    _check_bool(out, "stacking", where)
    _check_bool(out["smote"], "enabled", f"{where}.smote")
    _check_int(out["smote"], "k_neighbors", 1, f"{where}.smote")
    for name, params in _MODEL_PARAMS.items():
        sub = out["models"][name]
        for key, kind in params.items():
            at = f"{where}.models.{name}"
            if kind == "int":
                _check_int(sub, key, 1, at)
            elif kind == "int_list":
                value = sub[key]
                if (not isinstance(value, (list, tuple)) or not value
                        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                    raise ValueError(f"{at}.{key}: must be a non-empty list of positive integers, got {value!r}")
                sub[key] = [int(v) for v in value]
            else:
                value = sub[key]
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                if not ok or (kind == "positive" and value <= 0) or (kind == "non_negative" and value < 0):
                    raise ValueError(f"{at}.{key}: must be a {kind.replace('_', '-')} number, got {value!r}")
                sub[key] = float(value)
    return out


def _merge(base: dict, override: Mapping, where: str) -> None:
    if not isinstance(override, Mapping):
        raise ValueError(f"{where}: must be a mapping, got {type(override).__name__}")
    for key, value in override.items():
        if key not in base:
            raise ValueError(f"{where}.{key}: unknown key; allowed: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            _merge(base[key], value, f"{where}.{key}")
        else:
            base[key] = copy.deepcopy(value)


def _check_int(d: dict, key: str, minimum: int, where: str) -> None:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}.{key}: must be an integer >= {minimum}, got {value!r}")
    d[key] = int(value)


def _check_bool(d: dict, key: str, where: str) -> None:
    if not isinstance(d[key], bool):
        raise ValueError(f"{where}.{key}: must be true or false, got {d[key]!r}")


# ---------------------------------------------------------------------------------------------------
# The table


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns of a patient table, in table order.

    Rule: every numeric (not boolean) column, except :data:`NON_FEATURE_COLUMNS` (identity, and absolute
    counts that scale with the amount of blood imaged) and columns starting with one of
    :data:`NON_FEATURE_PREFIXES`.

    Parameters
    ----------
    table : pandas.DataFrame
        The patient table.

    Returns
    -------
    list of str

    Example
    -------
    >>> t = pd.DataFrame({"patient": ["a"], "condition": ["control"], "n_slides": [2], "count_B": [10],
    ...                   "frac_B": [0.1], "ctc_per_1000": [0.0], "note": ["x"], "flag": [True]})
    >>> feature_columns(t)
    ['frac_B', 'ctc_per_1000']
    """
    out = []
    for name in table.columns:
        dtype = table[name].dtype
        if (isinstance(name, str) and name not in NON_FEATURE_COLUMNS and not name.startswith(NON_FEATURE_PREFIXES)
                and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            out.append(name)
    return out


def labelled_mask(table: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows with a condition label (not NaN, empty or ``unknown``).

    Example
    -------
    >>> labelled_mask(pd.DataFrame({"condition": ["control", "", None, "Unknown", "disease_a"]}))
    array([ True, False, False, False,  True])
    """
    if "condition" not in table.columns:
        raise ValueError(f"patient table: no 'condition' column (columns: {', '.join(map(str, table.columns))})")
    cond = table["condition"].astype("string").str.strip()
    return (cond.notna() & ~cond.str.lower().isin(UNLABELLED)).to_numpy(dtype=bool)


def _check_patients(table: pd.DataFrame, where: str) -> None:
    if "patient" not in table.columns:
        raise ValueError(f"{where}: no 'patient' column (columns: {', '.join(map(str, table.columns))})")
    dup = table["patient"][table["patient"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{where}: one row per patient expected; repeated: {', '.join(map(str, dup[:10]))}")


def _feature_matrix(table: pd.DataFrame, features: Sequence[str], where: str) -> np.ndarray:
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise ValueError(f"{where}: feature column(s) missing from the table: {', '.join(map(str, missing))}")
    bad = [f for f in features if not pd.api.types.is_numeric_dtype(table[f].dtype)]
    if bad:
        raise ValueError(f"{where}: feature column(s) not numeric: {', '.join(map(str, bad))}")
    X = table[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = [f for f, col in zip(features, np.isinf(X).T) if col.any()]
    if infinite:
        raise ValueError(f"{where}: feature column(s) with infinite values: {', '.join(map(str, infinite))}")
    return X


# ---------------------------------------------------------------------------------------------------
# Models


def _make_sampler(k_neighbors: int, seed: int) -> SMOTE:
    return SMOTE(k_neighbors=k_neighbors, random_state=seed)


def _make_estimator(name: str, n_classes: int, settings: dict, seed: int):
    p = settings["models"][name]
    threads = settings["threads"]
    if name == "xgboost":
        return XGBClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"],
                             learning_rate=p["learning_rate"], tree_method="hist", importance_type="gain",
                             random_state=seed, n_jobs=threads, verbosity=0)
    if name == "catboost":
        return CatBoostClassifier(iterations=p["iterations"], depth=p["depth"], learning_rate=p["learning_rate"],
                                  loss_function="Logloss" if n_classes == 2 else "MultiClass",
                                  random_seed=seed, thread_count=threads, allow_writing_files=False, verbose=0)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=p["n_estimators"], min_samples_leaf=p["min_samples_leaf"],
                                      random_state=seed, n_jobs=threads)
    if name == "mlp":
        # L-BFGS: the solver scikit-learn recommends for small data sets; deterministic and fast here.
        return MLPClassifier(hidden_layer_sizes=tuple(p["hidden"]), alpha=p["alpha"], max_iter=p["max_iter"],
                             solver="lbfgs", random_state=seed)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


def _smote_k(y: np.ndarray, settings: dict) -> tuple[int | None, bool]:
    """SMOTE's k for these training labels (None: no SMOTE) and whether SMOTE had to be skipped."""
    if not settings["smote"]["enabled"]:
        return None, False
    k = min(settings["smote"]["k_neighbors"], int(np.bincount(y).min()) - 1)
    return (k, False) if k >= 1 else (None, True)


def _make_pipeline(name: str, n_classes: int, settings: dict, seed: int, k_neighbors: int | None) -> Pipeline:
    steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if k_neighbors is not None:
        steps.append(("smote", _make_sampler(k_neighbors, seed)))
    if name == "mlp":
        steps.append(("scale", StandardScaler()))
    steps.append(("model", _make_estimator(name, n_classes, settings, seed)))
    return Pipeline(steps)


def _proba(pipeline: Pipeline, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities (n, n_classes) of a fitted pipeline, columns in class-code order."""
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(pipeline.classes_, dtype=int)] = pipeline.predict_proba(X)
    return out


def _stack_features(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    # Binary: one column per model (the rows sum to 1, the other column adds nothing).
    return np.hstack([p[:, 1:] if p.shape[1] == 2 else p for p in (probs[m] for m in MODEL_NAMES)])


def _make_meta(seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=1000, random_state=seed)


@dataclass
class StageModel:
    """The fitted ensemble of one stage.

    Attributes
    ----------
    name : str
        ``disease`` or ``subtype``.
    classes : list of str
        Class names; column ``i`` of :meth:`predict_proba` is ``classes[i]``.
    pipelines : dict
        Model name -> fitted :class:`imblearn.pipeline.Pipeline`.
    meta : LogisticRegression or None
        The stacker (``settings["stacking"]``), else None (soft voting).
    """

    name: str
    classes: list[str]
    pipelines: dict
    meta: LogisticRegression | None = None

    def model_probabilities(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Model name -> (n, n_classes) probabilities."""
        return {m: _proba(self.pipelines[m], X, len(self.classes)) for m in MODEL_NAMES}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The ensemble's (n, n_classes) probabilities: soft vote, or the stacker when there is one."""
        return _combine(self.model_probabilities(X), self.meta, len(self.classes))


def _combine(probs: Mapping[str, np.ndarray], meta: LogisticRegression | None, n_classes: int) -> np.ndarray:
    if meta is None:
        return np.mean([probs[m] for m in MODEL_NAMES], axis=0)
    out = np.zeros((len(next(iter(probs.values()))), n_classes))
    out[:, meta.classes_] = meta.predict_proba(_stack_features(probs))
    return out


@dataclass
class TwoStageModel:
    """Both fitted stages plus what prediction needs to check its input.

    Attributes
    ----------
    features : list of str
        Feature columns, in the order the models take them.
    control_label : str
    subtypes : list of str
        The subtype (non-control) labels; the classes of stage ``subtype``.
    disease, subtype : StageModel
    settings : dict
        Resolved settings it was trained with.
    seed : int
    versions : dict
        Library versions at training time (``scikit-learn``, ``xgboost``, ``catboost``,
        ``imbalanced-learn``, ``numpy``, ``hemoprofile``).
    """

    features: list[str]
    control_label: str
    subtypes: list[str]
    disease: StageModel
    subtype: StageModel
    settings: dict
    seed: int
    versions: dict = field(default_factory=dict)

    @property
    def states(self) -> list[str]:
        """The final states: the control label, then the subtypes."""
        return [self.control_label, *self.subtypes]


@dataclass
class TwoStageResult:
    """What :func:`train_two_stage` returns.

    Attributes
    ----------
    model : TwoStageModel
        Final ensembles fitted on all labelled patients (stage ``disease``) and all disease patients
        (stage ``subtype``).
    metrics : dict
        JSON-serialisable cross-validated metrics (shape in :func:`train_two_stage`).
    oof : pandas.DataFrame
        Out-of-fold predictions of the labelled patients.
    importances : pandas.DataFrame
        Long table ``stage, feature, model, importance``.
    """

    model: TwoStageModel
    metrics: dict
    oof: pd.DataFrame
    importances: pd.DataFrame


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on.

    Example
    -------
    >>> sorted(library_versions())
    ['catboost', 'hemoprofile', 'imbalanced-learn', 'numpy', 'scikit-learn', 'xgboost']
    """
    from hemoprofile import __version__ as hemoprofile_version

    return {"scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__, "catboost": catboost.__version__,
            "imbalanced-learn": imblearn.__version__, "numpy": np.__version__, "hemoprofile": hemoprofile_version}


# ---------------------------------------------------------------------------------------------------
# Metrics


def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _scores_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and macro F1 (over the classes
    present in truth or prediction, as :func:`sklearn.metrics.f1_score` does)."""
    tp = np.diag(cm).astype(float)
    true_n = cm.sum(axis=1)
    pred_n = cm.sum(axis=0)
    present = true_n > 0
    seen = present | (pred_n > 0)
    recall = tp[present] / true_n[present]
    denom = (true_n + pred_n)[seen]
    f1 = np.where(denom > 0, 2 * tp[seen] / np.maximum(denom, 1), 0.0)
    return {"accuracy": float(tp.sum() / cm.sum()), "balanced_accuracy": float(recall.mean()),
            "macro_f1": float(f1.mean())}


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic, ties counted half; None with one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC; multiclass: macro one-vs-rest. None unless every class is present in ``y``."""
    n_classes = proba.shape[1]
    if n_classes == 2:
        return _binary_auc(y == 1, proba[:, 1])
    aucs = [_binary_auc(y == k, proba[:, k]) for k in range(n_classes)]
    return None if any(a is None for a in aucs) else float(np.mean(aucs))


def _point_metrics(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, with_auc: bool) -> dict[str, float]:
    out = _scores_from_confusion(_confusion(y, pred, proba.shape[1]))
    if with_auc:
        out["roc_auc"] = _auc(y, proba)
    return out


def _with_ci(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, with_auc: bool, n_boot: int,
             rng: np.random.Generator) -> dict:
    """Metrics with 95 % percentile bootstrap intervals over patients."""
    point = _point_metrics(y, proba, pred, with_auc)
    n_classes = proba.shape[1]
    samples: dict[str, list[float]] = {k: [] for k in point}
    skipped = 0
    for idx in rng.integers(0, len(y), size=(n_boot, len(y))):
        yb = y[idx]
        for key, value in _scores_from_confusion(_confusion(yb, pred[idx], n_classes)).items():
            samples[key].append(value)
        if with_auc:
            auc = _auc(yb, proba[idx])
            if auc is None:
                skipped += 1
            else:
                samples["roc_auc"].append(auc)
    out = {}
    for key, value in point.items():
        values = samples[key]
        ci = [float(v) for v in np.percentile(values, [2.5, 97.5])] if values else None
        out[key] = {"value": value, "ci95": ci}
    if with_auc:
        out["roc_auc"]["skipped_resamples"] = skipped
    return out


# ---------------------------------------------------------------------------------------------------
# Cross-validation of one stage


@dataclass
class _StageData:
    name: str
    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    patients: np.ndarray


@dataclass
class _StageCV:
    folds: int
    model_oof: dict  # model name or "ensemble" (and "soft_voting" with stacking) -> (n, n_classes)
    extra: np.ndarray | None  # ensemble probabilities of the extra rows, averaged over all fold models
    smote_skipped: int
    stacking_skipped: int


def _stage_data(name: str, X: np.ndarray, labels: np.ndarray, classes: list[str], patients: np.ndarray,
                description: str) -> _StageData:
    counts = {c: int((labels == c).sum()) for c in classes}
    if len(classes) < 2:
        raise ValueError(f"stage {name!r} ({description}) needs at least two classes; the labelled patients "
                         f"give only {counts}")
    for c, n in counts.items():
        if n < 2:
            raise ValueError(f"stage {name!r} ({description}): class {c!r} has {n} labelled patient(s); every "
                             f"class needs at least 2 (class counts: {counts})")
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code[v] for v in labels], dtype=int)
    return _StageData(name, X, y, list(classes), patients)


def _fit_meta(X: np.ndarray, y: np.ndarray, settings: dict, seed: int) -> LogisticRegression | None:
    """A stacker fitted on an inner cross-validation of (X, y); None where a class has < 2 rows."""
    smallest = int(np.bincount(y).min())
    if smallest < 2:
        return None
    n_classes = int(y.max()) + 1
    inner = StratifiedKFold(n_splits=min(settings["cv_folds"], smallest), shuffle=True, random_state=seed)
    oof = {m: np.zeros((len(y), n_classes)) for m in MODEL_NAMES}
    for train, test in inner.split(X, y):
        k, _ = _smote_k(y[train], settings)
        for m in MODEL_NAMES:
            pipe = _make_pipeline(m, n_classes, settings, seed, k).fit(X[train], y[train])
            oof[m][test] = _proba(pipe, X[test], n_classes)
    return _make_meta(seed).fit(_stack_features(oof), y)


def _cross_validate(data: _StageData, settings: dict, seed: int, extra_X: np.ndarray | None = None) -> _StageCV:
    n_classes = len(data.classes)
    n_splits = min(settings["cv_folds"], int(np.bincount(data.y, minlength=n_classes).min()))
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=settings["cv_repeats"], random_state=seed)
    keys = [*MODEL_NAMES, "ensemble"] + (["soft_voting"] if settings["stacking"] else [])
    sums = {k: np.zeros((len(data.y), n_classes)) for k in keys}
    times_scored = np.zeros(len(data.y))
    extra_sum = None if extra_X is None else np.zeros((len(extra_X), n_classes))
    smote_skipped = stacking_skipped = n_fits = 0
    for train, test in splitter.split(data.X, data.y):
        k, skipped = _smote_k(data.y[train], settings)
        smote_skipped += skipped
        pipes = {m: _make_pipeline(m, n_classes, settings, seed, k).fit(data.X[train], data.y[train])
                 for m in MODEL_NAMES}
        meta = None
        if settings["stacking"]:
            meta = _fit_meta(data.X[train], data.y[train], settings, seed)
            stacking_skipped += meta is None
        probs = {m: _proba(pipes[m], data.X[test], n_classes) for m in MODEL_NAMES}
        for m in MODEL_NAMES:
            sums[m][test] += probs[m]
        sums["ensemble"][test] += _combine(probs, meta, n_classes)
        if settings["stacking"]:
            sums["soft_voting"][test] += _combine(probs, None, n_classes)
        times_scored[test] += 1
        if extra_X is not None and len(extra_X):
            extra_probs = {m: _proba(pipes[m], extra_X, n_classes) for m in MODEL_NAMES}
            extra_sum += _combine(extra_probs, meta, n_classes)
        n_fits += 1
    if smote_skipped:
        log.warning("stage %s: %d of %d folds trained without SMOTE (a class has 1 training patient)",
                    data.name, smote_skipped, n_fits)
    oof = {k: v / times_scored[:, None] for k, v in sums.items()}
    extra = None if extra_sum is None else extra_sum / n_fits
    return _StageCV(n_splits, oof, extra, smote_skipped, stacking_skipped)


def _fit_final(data: _StageData, cv: _StageCV, settings: dict, seed: int) -> StageModel:
    n_classes = len(data.classes)
    k, _ = _smote_k(data.y, settings)
    pipes = {m: _make_pipeline(m, n_classes, settings, seed, k).fit(data.X, data.y) for m in MODEL_NAMES}
    meta = None
    if settings["stacking"]:
        meta = _make_meta(seed).fit(_stack_features({m: cv.model_oof[m] for m in MODEL_NAMES}), data.y)
    return StageModel(data.name, list(data.classes), pipes, meta)


def _stage_report(data: _StageData, cv: _StageCV, settings: dict, rng: np.random.Generator) -> dict:
    proba = cv.model_oof["ensemble"]
    pred = proba.argmax(axis=1)
    per_model = {}
    for key, p in cv.model_oof.items():
        per_model[key] = _point_metrics(data.y, p, p.argmax(axis=1), with_auc=True)
    return {
        "classes": list(data.classes),
        "n_patients": int(len(data.y)),
        "class_counts": {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)},
        "cv": {"folds": int(cv.folds), "repeats": settings["cv_repeats"], "smote_skipped_folds": int(cv.smote_skipped),
               "stacking_skipped_folds": int(cv.stacking_skipped)},
        "metrics": _with_ci(data.y, proba, pred, True, settings["bootstrap"], rng),
        "per_model": per_model,
        "confusion_matrix": _confusion(data.y, pred, len(data.classes)).tolist(),
    }


# ---------------------------------------------------------------------------------------------------
# Importances


def _normalise(values: np.ndarray) -> np.ndarray:
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=float)), 0, None)
    total = values.sum()
    return values / total if total > 0 else values


def _permutation_importance(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, seed: int,
                            repeats: int = _PERMUTATION_REPEATS) -> np.ndarray:
    """Mean increase in log loss when one feature's column is shuffled (``repeats`` shuffles, seeded).

    Log loss rather than accuracy: on its training data the MLP is usually right everywhere and
    accuracy barely moves when one feature is shuffled. The quantity of
    :func:`sklearn.inspection.permutation_importance` with ``scoring="neg_log_loss"`` (other shuffles),
    without its per-call scorer overhead: the ``repeats`` shuffled copies of a feature go through the
    pipeline in one batch.
    """
    rng = np.random.default_rng(seed)
    n, n_features = X.shape
    rows = np.arange(n)

    def log_loss(proba: np.ndarray, truth: np.ndarray) -> np.ndarray:
        eps = np.finfo(proba.dtype).eps
        return -np.log(np.clip(proba[np.arange(len(truth)), truth], eps, 1)).reshape(-1, n).mean(axis=1)

    base = log_loss(pipeline.predict_proba(X), y)[0]
    out = np.zeros(n_features)
    for j in range(n_features):
        batch = np.tile(X, (repeats, 1))
        batch[:, j] = np.concatenate([X[rng.permutation(rows), j] for _ in range(repeats)])
        out[j] = (log_loss(pipeline.predict_proba(batch), np.tile(y, repeats)) - base).mean()
    return out


def _stage_importances(stage: StageModel, data: _StageData, seed: int) -> dict[str, np.ndarray]:
    p = stage.pipelines
    out = {
        "xgboost": _normalise(p["xgboost"].named_steps["model"].feature_importances_),
        "catboost": _normalise(p["catboost"].named_steps["model"].get_feature_importance(
            type="PredictionValuesChange")),
        "random_forest": _normalise(p["random_forest"].named_steps["model"].feature_importances_),
        "mlp": _normalise(_permutation_importance(p["mlp"], data.X, data.y, seed)),
    }
    out["ensemble"] = np.mean([out[m] for m in MODEL_NAMES], axis=0)
    return out


def _importance_table(per_stage: Mapping[str, Mapping[str, np.ndarray]], features: Sequence[str]) -> pd.DataFrame:
    frames = []
    order = ["ensemble", *MODEL_NAMES]
    for s, (stage, imp) in enumerate(per_stage.items()):
        rank = np.lexsort((np.asarray(features, dtype=object).astype(str), -imp["ensemble"]))
        rows = [(s, r, order.index(m), stage, features[i], m, float(imp[m][i]))
                for r, i in enumerate(rank) for m in order]
        frames.append(pd.DataFrame(rows, columns=["_s", "_r", "_m", "stage", "feature", "model", "importance"]))
    table = pd.concat(frames, ignore_index=True).sort_values(["_s", "_r", "_m"], kind="stable")
    return table.drop(columns=["_s", "_r", "_m"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# Training


def train_two_stage(table: pd.DataFrame, features: Sequence[str], settings: Mapping | None, seed: int = 0
                    ) -> TwoStageResult:
    """Cross-validate and fit the two-stage ensemble on the labelled patients of ``table``.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per patient: ``patient``, ``condition`` and the ``features`` (numeric, NaN allowed).
        Unlabelled rows (condition NaN, empty or ``unknown``) are ignored here.
    features : sequence of str
        Feature columns (e.g. :func:`feature_columns`).
    settings : mapping or None
        Patient-model settings; resolved with :func:`resolve_settings` (so a partial config works).
    seed : int
        Seeds the splits, every model, SMOTE and the bootstrap.

    Returns
    -------
    TwoStageResult
        ``metrics`` has this shape (``roc_auc`` of stage ``subtype`` is macro one-vs-rest; ``overall``
        scores the final state, combining each patient's OOF stage-1 and stage-2 probabilities)::

            {"n_patients", "n_unlabelled", "features", "seed", "settings",
             "stages": {
               "disease": {"classes", "n_patients", "class_counts",
                           "cv": {"folds", "repeats", "smote_skipped_folds", "stacking_skipped_folds"},
                           "metrics": {"accuracy" | "balanced_accuracy" | "macro_f1" | "roc_auc":
                                       {"value", "ci95": [lo, hi] or None}},  # roc_auc + "skipped_resamples"
                           "per_model": {<model> | "ensemble" (| "soft_voting"): {metric: value}},
                           "confusion_matrix": rows = truth, columns = prediction, in class order},
               "subtype": same,
               "overall": {"classes", "metrics" (no roc_auc), "confusion_matrix"}}}

        ``oof`` columns: ``patient, condition, stage1_true, p_disease, stage1_pred, p_<subtype>...`` (NaN
        for controls), ``stage2_pred`` (None for controls), ``predicted_state`` and ``p_state_<state>``
        (joint probabilities; a control's come from the stage-2 fold models, none of which trained on it).
        ``importances``: ``stage, feature, model, importance``, each model's normalised to sum 1 (or all
        0), ``ensemble`` their mean; sorted by stage, then the feature's ensemble importance.

    Raises
    ------
    ValueError
        Bad settings, missing/non-numeric features, repeated patients, or a stage class with fewer than 2
        labelled patients (naming the stage, the class and the counts).
    """
    settings = resolve_settings(settings)
    features = [str(f) for f in features]
    if not features:
        raise ValueError("train_two_stage: no feature columns given")
    _check_patients(table, "train_two_stage")
    labelled = labelled_mask(table)
    X_all = _feature_matrix(table, features, "train_two_stage")
    control = settings["control_label"]
    X = X_all[labelled]
    conditions = table["condition"][labelled].astype(str).str.strip().to_numpy()
    patients = table["patient"][labelled].to_numpy()
    subtypes = sorted(set(conditions) - {control})
    _check_output_names(control, subtypes)

    is_disease = conditions != control
    stage1 = _stage_data("disease", X, np.where(is_disease, DISEASE, control), [control, DISEASE], patients,
                         f"{control} vs any other label")
    stage2 = _stage_data("subtype", X[is_disease], conditions[is_disease], subtypes, patients[is_disease],
                         "which non-control label, on the disease patients")
    log.info("patient model: %d labelled patients (%s), %d unlabelled, %d features", len(X),
             ", ".join(f"{c}: {int((conditions == c).sum())}" for c in [control, *subtypes]),
             int((~labelled).sum()), len(features))

    with threadpool_limits(limits=settings["threads"]):
        cv1 = _cross_validate(stage1, settings, seed)
        cv2 = _cross_validate(stage2, settings, seed, extra_X=X[~is_disease])
        final1 = _fit_final(stage1, cv1, settings, seed)
        final2 = _fit_final(stage2, cv2, settings, seed)
        importances = _importance_table(
            {"disease": _stage_importances(final1, stage1, seed), "subtype": _stage_importances(final2, stage2, seed)},
            features)

    model = TwoStageModel(features=features, control_label=control, subtypes=subtypes, disease=final1,
                          subtype=final2, settings=copy.deepcopy(settings), seed=int(seed), versions=library_versions())

    # End-to-end: every labelled patient's OOF p_disease with its stage-2 probabilities (OOF for disease
    # patients, out-of-sample fold models for controls).
    p_disease = cv1.model_oof["ensemble"][:, 1]
    p_sub = np.empty((len(X), len(subtypes)))
    p_sub[is_disease] = cv2.model_oof["ensemble"]
    p_sub[~is_disease] = cv2.extra
    states = model.states
    state_true = np.where(is_disease, np.searchsorted(np.asarray(subtypes), conditions) + 1, 0)
    state_pred = _decide(p_disease, p_sub)

    rngs = [np.random.default_rng([int(seed), i]) for i in range(3)]
    overall_metrics = _with_ci(state_true, _joint(p_disease, p_sub), state_pred, False, settings["bootstrap"], rngs[2])
    metrics = {
        "n_patients": int(len(table)),
        "n_unlabelled": int((~labelled).sum()),
        "features": list(features),
        "seed": int(seed),
        "settings": copy.deepcopy(settings),
        "stages": {
            "disease": _stage_report(stage1, cv1, settings, rngs[0]),
            "subtype": _stage_report(stage2, cv2, settings, rngs[1]),
            "overall": {"classes": states, "metrics": overall_metrics,
                        "confusion_matrix": _confusion(state_true, state_pred, len(states)).tolist()},
        },
    }

    oof = pd.DataFrame({"patient": patients, "condition": conditions, "stage1_true": is_disease,
                        "p_disease": p_disease, "stage1_pred": p_disease > 0.5})
    stage2_pred = np.full(len(X), None, dtype=object)
    stage2_pred[is_disease] = np.asarray(subtypes, dtype=object)[cv2.model_oof["ensemble"].argmax(axis=1)]
    for j, s in enumerate(subtypes):
        oof[f"p_{s}"] = np.where(is_disease, p_sub[:, j], np.nan)
    oof["stage2_pred"] = stage2_pred
    oof["predicted_state"] = np.asarray(states, dtype=object)[state_pred]
    for j, s in enumerate(states):
        oof[f"p_state_{s}"] = _joint(p_disease, p_sub)[:, j]
    return TwoStageResult(model=model, metrics=metrics, oof=oof, importances=importances)


def _check_output_names(control: str, subtypes: Sequence[str]) -> None:
    if control == DISEASE:
        raise ValueError(f"control_label {control!r} is the name of stage 1's other class; use another label")
    names = ["patient", "p_disease", "predicted_disease", *(f"p_{s}" for s in subtypes), "predicted_subtype",
             "predicted_state", *(f"p_state_{s}" for s in [control, *subtypes])]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"condition labels {[control, *subtypes]} give clashing output columns {clash}; "
                         "rename the label in the sample sheet")


def _joint(p_disease: np.ndarray, p_sub: np.ndarray) -> np.ndarray:
    """(n, 1 + n_subtypes): [1 - p_disease, p_disease * p(subtype | disease)...]."""
    return np.column_stack([1 - p_disease, p_disease[:, None] * p_sub])


def _decide(p_disease: np.ndarray, p_sub: np.ndarray) -> np.ndarray:
    """State index: 0 (control) where p_disease <= 0.5, else 1 + the most probable subtype."""
    return np.where(p_disease > 0.5, p_sub.argmax(axis=1) + 1, 0)


# ---------------------------------------------------------------------------------------------------
# Prediction and model files


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
    X = _feature_matrix(table, model.features, "predict_two_stage")
    with threadpool_limits(limits=model.settings["threads"]):
        p_disease = model.disease.predict_proba(X)[:, 1]
        p_sub = model.subtype.predict_proba(X)
    states = model.states
    out = pd.DataFrame({"patient": table["patient"].to_numpy(), "p_disease": p_disease,
                        "predicted_disease": p_disease > 0.5})
    for j, s in enumerate(model.subtypes):
        out[f"p_{s}"] = p_sub[:, j]
    out["predicted_subtype"] = np.asarray(model.subtypes, dtype=object)[p_sub.argmax(axis=1)]
    out["predicted_state"] = np.asarray(states, dtype=object)[_decide(p_disease, p_sub)]
    joint = _joint(p_disease, p_sub)
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
        with warnings.catch_warnings():
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
