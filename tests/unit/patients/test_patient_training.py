"""Training the patient-level two-stage ensemble: metrics, OOF table and importances, cross-validation
hygiene (SMOTE inside folds), learnability, bad input and reproducibility."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers.patient_tables import FAST, make_table, train
from imblearn.over_sampling import SMOTE
from pandas.testing import assert_frame_equal

from hemoprofile.patients import ensemble, training
from hemoprofile.patients.prediction import predict_two_stage
from hemoprofile.patients.settings import resolve_settings
from hemoprofile.patients.table import feature_columns
from hemoprofile.patients.training import train_two_stage


def test_metrics_shape_and_learnable_table(learnable):
    table, result = learnable
    m = result.metrics
    assert json.loads(json.dumps(m)) == m
    assert m["n_patients"] == 33 and m["n_unlabelled"] == 3 and m["seed"] == 0
    assert m["features"] == [f"f{i}" for i in range(12)]
    assert m["settings"] == resolve_settings(FAST)
    d, s, o = (m["stages"][k] for k in ("disease", "subtype", "overall"))
    assert d["classes"] == ["control", "disease"] and d["class_counts"] == {"control": 10, "disease": 20}
    assert s["classes"] == ["disease_a", "disease_b"] and s["n_patients"] == 20
    assert o["classes"] == ["control", "disease_a", "disease_b"]
    assert d["cv"] == {"folds": 3, "repeats": 2, "smote_skipped_folds": 0, "stacking_skipped_folds": 0}
    for stage in (d, s):
        assert set(stage["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc"}
        assert set(stage["per_model"]) == {"xgboost", "catboost", "random_forest", "mlp", "ensemble"}
        assert stage["per_model"]["ensemble"]["balanced_accuracy"] == stage["metrics"]["balanced_accuracy"]["value"]
        assert np.sum(stage["confusion_matrix"]) == stage["n_patients"]
        for entry in stage["metrics"].values():
            lo, hi = entry["ci95"]
            assert lo <= entry["value"] <= hi
    assert set(o["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert np.sum(o["confusion_matrix"]) == 30
    # the signal is strong: every stage is well above chance
    assert d["metrics"]["balanced_accuracy"]["value"] > 0.75
    assert d["metrics"]["roc_auc"]["value"] > 0.85
    assert s["metrics"]["balanced_accuracy"]["value"] > 0.75
    assert o["metrics"]["balanced_accuracy"]["value"] > 0.6


def test_noise_features_give_chance():
    table = make_table(n_control=20, n_a=10, n_b=10, n_unlabelled=0, n_features=20, learnable=False, seed=3)
    result = train(table)
    d = result.metrics["stages"]["disease"]["metrics"]
    assert abs(d["balanced_accuracy"]["value"] - 0.5) < 0.2
    assert d["roc_auc"]["ci95"][0] < 0.5 < d["roc_auc"]["ci95"][1]


def test_oof_table(learnable):
    table, result = learnable
    oof = result.oof
    labelled = table[table["condition"] != "unknown"]
    assert oof["patient"].tolist() == labelled["patient"].tolist()  # original rows only, once each
    assert list(oof.columns) == ["patient", "condition", "stage1_true", "p_disease", "stage1_pred", "p_disease_a",
                                 "p_disease_b", "stage2_pred", "predicted_state", "p_state_control",
                                 "p_state_disease_a", "p_state_disease_b"]
    control = oof["condition"] == "control"
    assert (oof["stage1_true"] == ~control).all()
    assert oof.loc[control, ["p_disease_a", "p_disease_b"]].isna().all().all()
    assert oof.loc[control, "stage2_pred"].isna().all()
    sick = oof[~control]
    assert np.allclose(sick["p_disease_a"] + sick["p_disease_b"], 1)
    assert np.allclose(oof.filter(like="p_state_").sum(axis=1), 1)
    assert ((oof["p_disease"] > 0.5) == oof["stage1_pred"]).all()
    # predicted_state follows the two decisions
    sick_pred = oof["stage1_pred"] & ~control
    assert (oof.loc[sick_pred, "predicted_state"] == oof.loc[sick_pred, "stage2_pred"]).all()
    assert (oof.loc[~oof["stage1_pred"], "predicted_state"] == "control").all()
    # the metrics are those of this table
    d = result.metrics["stages"]["disease"]
    assert d["metrics"]["accuracy"]["value"] == pytest.approx((oof["stage1_true"] == oof["stage1_pred"]).mean())
    o = result.metrics["stages"]["overall"]
    assert o["metrics"]["accuracy"]["value"] == pytest.approx((oof["predicted_state"] == oof["condition"]).mean())


def test_importances(learnable):
    _, result = learnable
    imp = result.importances
    assert list(imp.columns) == ["stage", "feature", "model", "importance"]
    assert len(imp) == 2 * 12 * 5
    assert imp["stage"].tolist() == sorted(imp["stage"].tolist())  # disease before subtype
    sums = imp.groupby(["stage", "model"])["importance"].sum()
    assert np.allclose(sums, 1)
    for stage, truth in (("disease", {"f0", "f1", "f2"}), ("subtype", {"f3", "f4"})):
        ens = imp[(imp["stage"] == stage) & (imp["model"] == "ensemble")]
        assert ens["importance"].is_monotonic_decreasing
        assert set(ens["feature"].head(len(truth))) == truth


# ---------------------------------------------------------------------------------------------------
# SMOTE inside the folds


def row_keys(X):
    return [np.asarray(r, dtype=np.float64).tobytes() for r in np.asarray(X)]


def test_smote_never_sees_evaluation_rows(monkeypatch):
    """Spy on every SMOTE fit and every prediction: a fold's sampler and model never see its evaluation
    rows, evaluation rows are original patients, and SMOTE does add synthetic rows to the training side."""
    table = make_table(n_control=6, n_a=9, n_b=6, n_unlabelled=2)
    features = feature_columns(table)
    patient_of = dict(zip(row_keys(table[features]), table["patient"]))
    events = []

    class SpySMOTE(SMOTE):
        def fit_resample(self, X, y, **params):
            X_res, y_res = super().fit_resample(X, y, **params)
            events.append(("fit", [patient_of[k] for k in row_keys(X)], len(X_res) - len(X)))
            return X_res, y_res

    real_proba = ensemble.proba

    def spy_proba(pipeline, X, n_classes):
        events.append(("predict", [patient_of.get(k) for k in row_keys(X)], None))
        return real_proba(pipeline, X, n_classes)

    monkeypatch.setattr(ensemble, "make_sampler", lambda k, seed: SpySMOTE(k_neighbors=k, random_state=seed))
    # every place that asks a fitted pipeline for probabilities
    monkeypatch.setattr(ensemble, "proba", spy_proba)
    monkeypatch.setattr(training, "proba", spy_proba)
    result = train_two_stage(table, features, FAST, seed=0)

    labelled = set(table.loc[table["condition"] != "unknown", "patient"])
    fits = [e for e in events if e[0] == "fit"]
    predictions = [e for e in events if e[0] == "predict"]
    assert len(fits) >= 2 * (3 * 2 + 1) * 4  # two stages x (folds x repeats + final) x four models
    assert any(added > 0 for *_, added in fits)  # SMOTE did make synthetic rows
    assert all(set(rows) <= labelled for _, rows, _ in fits)
    last_fit = None
    for kind, rows, _ in events:
        if kind == "fit":
            last_fit = set(rows)
        else:
            assert None not in rows, "a prediction was made for a row that is not an original patient"
            assert last_fit.isdisjoint(rows), "SMOTE (and the model) saw a row its fold evaluates"
    # every labelled patient was evaluated in each repeat of each of its stages, by each model
    counts = pd.Series([p for _, rows, _ in predictions for p in rows]).value_counts()
    sick = set(table.loc[table["condition"].isin(["disease_a", "disease_b"]), "patient"])
    for p in labelled:
        # stage 1: 2 repeats x 4 models; stage 2: disease patients 2 x 4 OOF, controls by all 3 x 2 x 4 folds
        expected = 8 + (8 if p in sick else 24)
        assert counts[p] == expected
    assert set(result.oof["patient"]) == labelled


def test_smote_skipped_when_a_class_is_tiny():
    # disease_b has 2 patients: every stage-2 fold trains on one of them, too few for SMOTE
    table = make_table(n_control=8, n_a=8, n_b=2, n_unlabelled=0)
    result = train(table)
    s = result.metrics["stages"]["subtype"]["cv"]
    assert s["folds"] == 2 and s["smote_skipped_folds"] == 2 * 2
    assert result.metrics["stages"]["disease"]["cv"]["smote_skipped_folds"] == 0


def test_smote_disabled_is_not_counted_as_skipped():
    table = make_table(n_control=8, n_a=8, n_b=2, n_unlabelled=0)
    result = train(table, {"smote": {"enabled": False}, "cv_repeats": 1})
    assert result.metrics["stages"]["subtype"]["cv"]["smote_skipped_folds"] == 0


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("conditions, stage, cls", [
    (["disease_a"] * 5 + ["disease_b"] * 5, "disease", "control"),
    (["control"] * 5 + ["disease_a"] * 5 + ["disease_b"], "subtype", "disease_b"),
    (["control"] * 1 + ["disease_a"] * 5 + ["disease_b"] * 5, "disease", "control"),
])
def test_missing_class_names_stage_class_and_counts(conditions, stage, cls):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"patient": [f"P{i}" for i in range(len(conditions))], "condition": conditions,
                          "f0": rng.normal(size=len(conditions))})
    with pytest.raises(ValueError, match=rf"stage '{stage}'.*class '{cls}' has \d labelled.*counts"):
        train_two_stage(table, ["f0"], FAST, seed=0)


def test_single_subtype_is_an_error():
    table = make_table(n_b=0)
    with pytest.raises(ValueError, match=r"stage 'subtype'.*class 'disease_b' has 0|needs at least two"):
        train(table)


def test_bad_tables():
    table = make_table()
    with pytest.raises(ValueError, match="repeated: P001"):
        train(pd.concat([table, table.iloc[[1]]]))
    with pytest.raises(ValueError, match="missing from the table: nope"):
        train_two_stage(table, ["f0", "nope"], FAST, seed=0)
    bad = table.copy()
    bad.loc[0, "f1"] = np.inf
    with pytest.raises(ValueError, match="infinite values: f1"):
        train(bad)
    with pytest.raises(ValueError, match="no feature columns"):
        train_two_stage(table, [], FAST, seed=0)


# ---------------------------------------------------------------------------------------------------
# Reproducibility, NaN features, stacking, no bootstrap


@pytest.mark.slow
def test_same_seed_gives_identical_results(learnable):
    table, first = learnable
    second = train(table)
    assert json.dumps(first.metrics, sort_keys=True) == json.dumps(second.metrics, sort_keys=True)
    assert first.metrics == second.metrics
    assert_frame_equal(first.oof, second.oof, check_exact=True)
    assert_frame_equal(first.importances, second.importances, check_exact=True)
    assert_frame_equal(predict_two_stage(first.model, table), predict_two_stage(second.model, table),
                       check_exact=True)
    other = train(table, seed=1)
    assert not first.oof["p_disease"].equals(other.oof["p_disease"])


def test_nan_features_train_and_predict():
    table = make_table(seed=4)
    rng = np.random.default_rng(0)
    features = [f"f{i}" for i in range(12)]
    values = table[features].to_numpy()
    values[rng.random(values.shape) < 0.15] = np.nan
    table[features] = values
    table["f11"] = np.nan  # a feature no patient has
    result = train(table)
    assert result.metrics["stages"]["disease"]["metrics"]["balanced_accuracy"]["value"] > 0.7
    pred = predict_two_stage(result.model, table)
    assert np.isfinite(pred["p_disease"]).all() and np.isfinite(pred["p_disease_a"]).all()
    imp = result.importances
    assert (imp.loc[imp["feature"] == "f11", "importance"] == 0).all()


@pytest.mark.slow
def test_stacking():
    table = make_table(n_unlabelled=0)
    result = train(table, {"stacking": True, "cv_repeats": 1})
    d = result.metrics["stages"]["disease"]
    assert set(d["per_model"]) == {"xgboost", "catboost", "random_forest", "mlp", "ensemble", "soft_voting"}
    assert d["metrics"]["balanced_accuracy"]["value"] > 0.75
    assert result.model.disease.meta is not None and result.model.subtype.meta is not None
    pred = predict_two_stage(result.model, table)
    assert np.allclose(pred.filter(like="p_state_").sum(axis=1), 1)


def test_bootstrap_zero_gives_no_intervals():
    result = train(make_table(n_unlabelled=0), {"bootstrap": 0, "cv_repeats": 1})
    for entry in result.metrics["stages"]["disease"]["metrics"].values():
        assert entry["ci95"] is None
