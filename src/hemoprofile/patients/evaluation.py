"""Scores of the patient model: accuracy, balanced accuracy, macro F1 and ROC AUC from class codes,
95 % percentile bootstrap intervals over patients, and feature importances (the tree models' own,
the MLP's by permutation).

The metrics are computed here rather than with :mod:`sklearn.metrics`: accuracy, balanced accuracy,
macro F1 and the confusion matrix give the same numbers as scikit-learn's (bit for bit), but the
bootstrap recomputes them on every resample and scikit-learn's input checks make that over 100 times
slower; ROC AUC is the rank-sum (Mann-Whitney) statistic, equal to scikit-learn's trapezoidal
:func:`~sklearn.metrics.roc_auc_score` up to the last bits of the float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline
from scipy.stats import rankdata

from hemoprofile.patients.ensemble import MODEL_NAMES, StageModel

_PERMUTATION_REPEATS = 5


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of class codes: rows = truth, columns = prediction."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores_from_confusion(cm: np.ndarray) -> dict[str, float]:
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


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC; multiclass: macro one-vs-rest. None unless every class is present in ``y``."""
    n_classes = proba.shape[1]
    if n_classes == 2:
        return _binary_auc(y == 1, proba[:, 1])
    aucs = [_binary_auc(y == k, proba[:, k]) for k in range(n_classes)]
    return None if any(a is None for a in aucs) else float(np.mean(aucs))


def point_metrics(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, with_auc: bool) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 (and ROC AUC) of one set of predictions."""
    out = scores_from_confusion(confusion(y, pred, proba.shape[1]))
    if with_auc:
        out["roc_auc"] = roc_auc(y, proba)
    return out


def with_ci(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, with_auc: bool, n_boot: int,
            rng: np.random.Generator) -> dict:
    """Metrics with 95 % percentile bootstrap intervals over patients."""
    point = point_metrics(y, proba, pred, with_auc)
    n_classes = proba.shape[1]
    samples: dict[str, list[float]] = {k: [] for k in point}
    skipped = 0
    for idx in rng.integers(0, len(y), size=(n_boot, len(y))):
        yb = y[idx]
        for key, value in scores_from_confusion(confusion(yb, pred[idx], n_classes)).items():
            samples[key].append(value)
        if with_auc:
            auc = roc_auc(yb, proba[idx])
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


def _normalise(values: np.ndarray) -> np.ndarray:
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=float)), 0, None)
    total = values.sum()
    return values / total if total > 0 else values


def log_loss_permutation_importance(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, seed: int,
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


def stage_importances(stage: StageModel, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Model name (and ``ensemble``, their mean) -> each feature's normalised importance in a final stage
    model; the MLP's by permutation on its training rows ``X, y``."""
    p = stage.pipelines
    out = {
        "xgboost": _normalise(p["xgboost"].named_steps["model"].feature_importances_),
        "catboost": _normalise(p["catboost"].named_steps["model"].get_feature_importance(
            type="PredictionValuesChange")),
        "random_forest": _normalise(p["random_forest"].named_steps["model"].feature_importances_),
        "mlp": _normalise(log_loss_permutation_importance(p["mlp"], X, y, seed)),
    }
    out["ensemble"] = np.mean([out[m] for m in MODEL_NAMES], axis=0)
    return out


def importance_table(per_stage: Mapping[str, Mapping[str, np.ndarray]], features: Sequence[str]) -> pd.DataFrame:
    """Long table ``stage, feature, model, importance``: by stage, then the feature's ensemble importance."""
    frames = []
    order = ["ensemble", *MODEL_NAMES]
    for s, (stage, imp) in enumerate(per_stage.items()):
        rank = np.lexsort((np.asarray(features, dtype=object).astype(str), -imp["ensemble"]))
        rows = [(s, r, order.index(m), stage, features[i], m, float(imp[m][i]))
                for r, i in enumerate(rank) for m in order]
        frames.append(pd.DataFrame(rows, columns=["_s", "_r", "_m", "stage", "feature", "model", "importance"]))
    table = pd.concat(frames, ignore_index=True).sort_values(["_s", "_r", "_m"], kind="stable")
    return table.drop(columns=["_s", "_r", "_m"]).reset_index(drop=True)
