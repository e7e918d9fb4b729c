"""The patient model's own metrics and permutation importances against scikit-learn's."""

import numpy as np
import pytest
from helpers.patient_tables import FAST, make_table
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from hemoprofile.patients.ensemble import make_pipeline
from hemoprofile.patients.evaluation import (
    confusion,
    log_loss_permutation_importance,
    point_metrics,
    scores_from_confusion,
)
from hemoprofile.patients.settings import resolve_settings
from hemoprofile.patients.table import feature_columns


def test_own_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    for n_classes in (2, 3):
        y = rng.integers(0, n_classes, 60)
        proba = rng.dirichlet(np.ones(n_classes), 60)
        proba[np.arange(60), y] += 0.3  # some signal
        proba /= proba.sum(1, keepdims=True)
        if n_classes == 2:
            proba = np.round(proba, 1)  # ties, which count half
        pred = proba.argmax(1)
        ours = point_metrics(y, proba, pred, with_auc=True)
        assert ours["accuracy"] == pytest.approx(np.mean(y == pred))
        assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        # not only close: the same floats (the reason scikit-learn's slower functions are not needed)
        assert ours["accuracy"] == accuracy_score(y, pred)
        assert ours["balanced_accuracy"] == balanced_accuracy_score(y, pred)
        assert ours["macro_f1"] == f1_score(y, pred, average="macro")
        assert np.array_equal(confusion(y, pred, n_classes), confusion_matrix(y, pred, labels=range(n_classes)))
        ref = roc_auc_score(y, proba[:, 1]) if n_classes == 2 else roc_auc_score(
            y, proba, multi_class="ovr", average="macro")
        assert ours["roc_auc"] == pytest.approx(ref)
    # a class predicted but absent from the truth counts in macro F1, as in sklearn
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    ours = scores_from_confusion(confusion(y, pred, 3))
    assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert ours["balanced_accuracy"] == pytest.approx(0.75)


def test_mlp_permutation_importance_matches_sklearn():
    table = make_table(n_unlabelled=0)
    X = table[feature_columns(table)].to_numpy()
    y = (table["condition"] != "control").to_numpy().astype(int)
    pipe = make_pipeline("mlp", 2, resolve_settings(FAST), 0, 3).fit(X, y)
    ours = log_loss_permutation_importance(pipe, X, y, seed=0, repeats=40)
    ref = permutation_importance(pipe, X, y, scoring="neg_log_loss", n_repeats=40, random_state=0).importances_mean
    assert np.corrcoef(ours, ref)[0, 1] > 0.98
    assert np.abs(ours - ref).max() < 0.1 * np.abs(ref).max()
