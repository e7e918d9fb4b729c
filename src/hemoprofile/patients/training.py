"""Training the patient-level two-stage ensemble (control vs disease, then the disease subtype):
cross-validation with SMOTE inside the folds, metrics with bootstrap intervals, importances and the final
models.

Input is the patient table (:mod:`hemoprofile.patients.aggregate`): one row per patient, a
``patient`` id, a ``condition`` label and numeric features (NaN allowed; :mod:`.table`). Rows whose
condition is empty, NaN or ``unknown`` are *unlabelled*: never trained on, never scored in the
metrics, but scored by :func:`~hemoprofile.patients.prediction.predict_two_stage`.

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
>>> from hemoprofile.patients.prediction import predict_two_stage
>>> from hemoprofile.patients.settings import resolve_settings
>>> from hemoprofile.patients.table import feature_columns
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from hemoprofile.patients.ensemble import (
    DISEASE,
    MODEL_NAMES,
    StageModel,
    TwoStageModel,
    combine,
    decide,
    joint_probabilities,
    library_versions,
    make_meta,
    make_pipeline,
    proba,
    smote_k,
    stack_features,
)
from hemoprofile.patients.evaluation import (
    confusion,
    importance_table,
    point_metrics,
    stage_importances,
    with_ci,
)
from hemoprofile.patients.settings import resolve_settings
from hemoprofile.patients.table import check_patients, feature_matrix, labelled_mask

log = logging.getLogger(__name__)


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
        k, _ = smote_k(y[train], settings)
        for m in MODEL_NAMES:
            pipe = make_pipeline(m, n_classes, settings, seed, k).fit(X[train], y[train])
            oof[m][test] = proba(pipe, X[test], n_classes)
    return make_meta(seed).fit(stack_features(oof), y)


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
        k, skipped = smote_k(data.y[train], settings)
        smote_skipped += skipped
        pipes = {m: make_pipeline(m, n_classes, settings, seed, k).fit(data.X[train], data.y[train])
                 for m in MODEL_NAMES}
        meta = None
        if settings["stacking"]:
            meta = _fit_meta(data.X[train], data.y[train], settings, seed)
            stacking_skipped += meta is None
        probs = {m: proba(pipes[m], data.X[test], n_classes) for m in MODEL_NAMES}
        for m in MODEL_NAMES:
            sums[m][test] += probs[m]
        sums["ensemble"][test] += combine(probs, meta, n_classes)
        if settings["stacking"]:
            sums["soft_voting"][test] += combine(probs, None, n_classes)
        times_scored[test] += 1
        if extra_X is not None and len(extra_X):
            extra_probs = {m: proba(pipes[m], extra_X, n_classes) for m in MODEL_NAMES}
            extra_sum += combine(extra_probs, meta, n_classes)
        n_fits += 1
    if smote_skipped:
        log.warning("stage %s: %d of %d folds trained without SMOTE (a class has 1 training patient)",
                    data.name, smote_skipped, n_fits)
    oof = {k: v / times_scored[:, None] for k, v in sums.items()}
    extra = None if extra_sum is None else extra_sum / n_fits
    return _StageCV(n_splits, oof, extra, smote_skipped, stacking_skipped)


def _fit_final(data: _StageData, cv: _StageCV, settings: dict, seed: int) -> StageModel:
    n_classes = len(data.classes)
    k, _ = smote_k(data.y, settings)
    pipes = {m: make_pipeline(m, n_classes, settings, seed, k).fit(data.X, data.y) for m in MODEL_NAMES}
    meta = None
    if settings["stacking"]:
        meta = make_meta(seed).fit(stack_features({m: cv.model_oof[m] for m in MODEL_NAMES}), data.y)
    return StageModel(data.name, list(data.classes), pipes, meta)


def _stage_report(data: _StageData, cv: _StageCV, settings: dict, rng: np.random.Generator) -> dict:
    p_ensemble = cv.model_oof["ensemble"]
    pred = p_ensemble.argmax(axis=1)
    per_model = {}
    for key, p in cv.model_oof.items():
        per_model[key] = point_metrics(data.y, p, p.argmax(axis=1), with_auc=True)
    return {
        "classes": list(data.classes),
        "n_patients": int(len(data.y)),
        "class_counts": {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)},
        "cv": {"folds": int(cv.folds), "repeats": settings["cv_repeats"], "smote_skipped_folds": int(cv.smote_skipped),
               "stacking_skipped_folds": int(cv.stacking_skipped)},
        "metrics": with_ci(data.y, p_ensemble, pred, True, settings["bootstrap"], rng),
        "per_model": per_model,
        "confusion_matrix": confusion(data.y, pred, len(data.classes)).tolist(),
    }


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
        Feature columns (e.g. :func:`~hemoprofile.patients.table.feature_columns`).
    settings : mapping or None
        Patient-model settings; resolved with :func:`~hemoprofile.patients.settings.resolve_settings`
        (so a partial config works).
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
    check_patients(table, "train_two_stage")
    labelled = labelled_mask(table)
    X_all = feature_matrix(table, features, "train_two_stage")
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
        importances = importance_table(
            {"disease": stage_importances(final1, stage1.X, stage1.y, seed),
             "subtype": stage_importances(final2, stage2.X, stage2.y, seed)},
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
    state_pred = decide(p_disease, p_sub)

    rngs = [np.random.default_rng([int(seed), i]) for i in range(3)]
    overall_metrics = with_ci(state_true, joint_probabilities(p_disease, p_sub), state_pred, False,
                              settings["bootstrap"], rngs[2])
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
                        "confusion_matrix": confusion(state_true, state_pred, len(states)).tolist()},
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
        oof[f"p_state_{s}"] = joint_probabilities(p_disease, p_sub)[:, j]
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
