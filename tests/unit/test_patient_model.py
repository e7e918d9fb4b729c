"""Patient-level two-stage ensemble: settings, cross-validation hygiene (SMOTE inside folds), learnability,
reproducibility, prediction and model files."""

import json
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling import SMOTE
from pandas.testing import assert_frame_equal
from sklearn.inspection import permutation_importance
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from hemoprofile import patient_model as pm

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
    return pm.train_two_stage(table, pm.feature_columns(table), {**FAST, **(settings or {})}, seed=seed)


@pytest.fixture(scope="module")
def learnable():
    table = make_table()
    return table, train(table)


# ---------------------------------------------------------------------------------------------------
# Settings and the table


def test_resolve_settings_deep_merges_without_touching_defaults():
    s = pm.resolve_settings({"cv_folds": 4, "smote": {"enabled": False}, "models": {"mlp": {"hidden": [8, 4]}}})
    assert s["cv_folds"] == 4 and s["smote"] == {"enabled": False, "k_neighbors": 3}
    assert s["models"]["mlp"] == {"hidden": [8, 4], "alpha": 0.001, "max_iter": 2000}
    assert s["models"]["xgboost"] == pm.DEFAULT_SETTINGS["models"]["xgboost"]
    assert pm.DEFAULT_SETTINGS["cv_folds"] == 5 and pm.DEFAULT_SETTINGS["models"]["mlp"]["hidden"] == [32]
    assert pm.resolve_settings(None) == pm.resolve_settings({})


@pytest.mark.parametrize("cfg, key", [
    ({"cv_fold": 3}, "patient_model.cv_fold"),
    ({"cv_folds": 1}, "patient_model.cv_folds"),
    ({"cv_repeats": 1.5}, "patient_model.cv_repeats"),
    ({"bootstrap": -1}, "patient_model.bootstrap"),
    ({"threads": True}, "patient_model.threads"),
    ({"smote": {"k_neighbors": 0}}, "patient_model.smote.k_neighbors"),
    ({"smote": {"enabled": "yes"}}, "patient_model.smote.enabled"),
    ({"smote": 3}, "patient_model.smote"),
    ({"models": {"svm": {}}}, "patient_model.models.svm"),
    ({"models": {"catboost": {"learning_rate": 0}}}, "patient_model.models.catboost.learning_rate"),
    ({"models": {"mlp": {"hidden": []}}}, "patient_model.models.mlp.hidden"),
    ({"control_label": ""}, "patient_model.control_label"),
    ({"stacking": 1}, "patient_model.stacking"),
])
def test_resolve_settings_names_the_bad_key(cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        pm.resolve_settings(cfg)


def test_feature_columns_rule():
    t = make_table(n_features=5).drop(columns=["f3", "f4"])
    t["n_cells"] = 100
    t["count_B"] = 5
    t["frac_B"] = 0.1
    t["flag"] = True
    t["note"] = "x"
    assert pm.feature_columns(t) == ["f0", "f1", "f2", "frac_B"]


def test_labelled_mask():
    t = pd.DataFrame({"condition": ["control", " ", np.nan, "UNKNOWN", "disease_a", None]})
    assert pm.labelled_mask(t).tolist() == [True, False, False, False, True, False]


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
        ours = pm._point_metrics(y, proba, pred, with_auc=True)
        assert ours["accuracy"] == pytest.approx(np.mean(y == pred))
        assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        ref = roc_auc_score(y, proba[:, 1]) if n_classes == 2 else roc_auc_score(
            y, proba, multi_class="ovr", average="macro")
        assert ours["roc_auc"] == pytest.approx(ref)
    # a class predicted but absent from the truth counts in macro F1, as in sklearn
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    ours = pm._scores_from_confusion(pm._confusion(y, pred, 3))
    assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert ours["balanced_accuracy"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------
# Training: shape, learnability, chance


def test_metrics_shape_and_learnable_table(learnable):
    table, result = learnable
    m = result.metrics
    assert json.loads(json.dumps(m)) == m
    assert m["n_patients"] == 33 and m["n_unlabelled"] == 3 and m["seed"] == 0
    assert m["features"] == [f"f{i}" for i in range(12)]
    assert m["settings"] == pm.resolve_settings(FAST)
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


def test_mlp_permutation_importance_matches_sklearn():
    table = make_table(n_unlabelled=0)
    X = table[pm.feature_columns(table)].to_numpy()
    y = (table["condition"] != "control").to_numpy().astype(int)
    pipe = pm._make_pipeline("mlp", 2, pm.resolve_settings(FAST), 0, 3).fit(X, y)
    ours = pm._permutation_importance(pipe, X, y, seed=0, repeats=40)
    ref = permutation_importance(pipe, X, y, scoring="neg_log_loss", n_repeats=40, random_state=0).importances_mean
    assert np.corrcoef(ours, ref)[0, 1] > 0.98
    assert np.abs(ours - ref).max() < 0.1 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------------
# SMOTE inside the folds


def row_keys(X):
    return [np.asarray(r, dtype=np.float64).tobytes() for r in np.asarray(X)]


def test_smote_never_sees_evaluation_rows(monkeypatch):
    """Spy on every SMOTE fit and every prediction: a fold's sampler and model never see its evaluation
    rows, evaluation rows are original patients, and SMOTE does add synthetic rows to the training side."""
    table = make_table(n_control=6, n_a=9, n_b=6, n_unlabelled=2)
    features = pm.feature_columns(table)
    patient_of = dict(zip(row_keys(table[features]), table["patient"]))
    events = []

    class SpySMOTE(SMOTE):
        def fit_resample(self, X, y, **params):
            X_res, y_res = super().fit_resample(X, y, **params)
            events.append(("fit", [patient_of[k] for k in row_keys(X)], len(X_res) - len(X)))
            return X_res, y_res

    real_proba = pm._proba

    def spy_proba(pipeline, X, n_classes):
        events.append(("predict", [patient_of.get(k) for k in row_keys(X)], None))
        return real_proba(pipeline, X, n_classes)

    monkeypatch.setattr(pm, "_make_sampler", lambda k, seed: SpySMOTE(k_neighbors=k, random_state=seed))
    monkeypatch.setattr(pm, "_proba", spy_proba)
    result = pm.train_two_stage(table, features, FAST, seed=0)

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
        pm.train_two_stage(table, ["f0"], FAST, seed=0)


def test_single_subtype_is_an_error():
    table = make_table(n_b=0)
    with pytest.raises(ValueError, match=r"stage 'subtype'.*class 'disease_b' has 0|needs at least two"):
        train(table)


def test_bad_tables():
    table = make_table()
    with pytest.raises(ValueError, match="repeated: P001"):
        train(pd.concat([table, table.iloc[[1]]]))
    with pytest.raises(ValueError, match="missing from the table: nope"):
        pm.train_two_stage(table, ["f0", "nope"], FAST, seed=0)
    bad = table.copy()
    bad.loc[0, "f1"] = np.inf
    with pytest.raises(ValueError, match="infinite values: f1"):
        train(bad)
    with pytest.raises(ValueError, match="no feature columns"):
        pm.train_two_stage(table, [], FAST, seed=0)


# ---------------------------------------------------------------------------------------------------
# Reproducibility, prediction, model files


def test_same_seed_gives_identical_results(learnable):
    table, first = learnable
    second = train(table)
    assert json.dumps(first.metrics, sort_keys=True) == json.dumps(second.metrics, sort_keys=True)
    assert first.metrics == second.metrics
    assert_frame_equal(first.oof, second.oof, check_exact=True)
    assert_frame_equal(first.importances, second.importances, check_exact=True)
    assert_frame_equal(pm.predict_two_stage(first.model, table), pm.predict_two_stage(second.model, table),
                       check_exact=True)
    other = train(table, seed=1)
    assert not first.oof["p_disease"].equals(other.oof["p_disease"])


def test_predict_scores_unlabelled_rows(learnable):
    table, result = learnable
    pred = pm.predict_two_stage(result.model, table)
    assert list(pred.columns) == ["patient", "p_disease", "predicted_disease", "p_disease_a", "p_disease_b",
                                  "predicted_subtype", "predicted_state", "p_state_control", "p_state_disease_a",
                                  "p_state_disease_b"]
    assert pred["patient"].tolist() == table["patient"].tolist()
    assert np.allclose(pred[["p_disease_a", "p_disease_b"]].sum(axis=1), 1)
    assert np.allclose(pred.filter(like="p_state_").sum(axis=1), 1)
    assert np.allclose(pred["p_state_control"], 1 - pred["p_disease"])
    assert np.allclose(pred["p_state_disease_b"], pred["p_disease"] * pred["p_disease_b"])
    assert (pred["predicted_disease"] == (pred["p_disease"] > 0.5)).all()
    # the unlabelled patients were drawn like disease_a
    unlabelled = pred[table["condition"] == "unknown"]
    assert len(unlabelled) == 3 and (unlabelled["predicted_state"] == "disease_a").all()
    # column order and extra columns do not matter; a missing feature is named
    shuffled = table[["f5", "patient", *[f"f{i}" for i in range(12) if i != 5]]].assign(extra="x")
    assert_frame_equal(pm.predict_two_stage(result.model, shuffled), pred)
    with pytest.raises(ValueError, match="missing from the table: f7"):
        pm.predict_two_stage(result.model, table.drop(columns=["f7"]))


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
    pred = pm.predict_two_stage(result.model, table)
    assert np.isfinite(pred["p_disease"]).all() and np.isfinite(pred["p_disease_a"]).all()
    imp = result.importances
    assert (imp.loc[imp["feature"] == "f11", "importance"] == 0).all()


def test_save_load_round_trip(learnable, tmp_path):
    table, result = learnable
    path = tmp_path / "models" / "patient_model.joblib"
    pm.save_model(path, result.model)
    loaded = pm.load_model(path)
    assert loaded.features == result.model.features and loaded.versions == pm.library_versions()
    assert_frame_equal(pm.predict_two_stage(loaded, table), pm.predict_two_stage(result.model, table),
                       check_exact=True)


def test_load_model_warns_on_version_mismatch_and_names_bad_files(learnable, tmp_path):
    _, result = learnable
    path = tmp_path / "m.joblib"
    pm.save_model(path, result.model)
    payload = joblib.load(path)
    payload["versions"]["xgboost"] = "0.1"
    joblib.dump(payload, path)
    with pytest.warns(UserWarning, match=r"xgboost 0\.1 \(installed"):
        assert pm.load_model(path).subtypes == ["disease_a", "disease_b"]
    with pytest.raises(ValueError, match="missing.joblib: no such file"):
        pm.load_model(tmp_path / "missing.joblib")
    corrupt = tmp_path / "corrupt.joblib"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.joblib: cannot be read"):
        pm.load_model(corrupt)
    other = tmp_path / "other.joblib"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="other.joblib: not a hemoprofile-patient-model"):
        pm.load_model(other)


def test_stacking():
    table = make_table(n_unlabelled=0)
    result = train(table, {"stacking": True, "cv_repeats": 1})
    d = result.metrics["stages"]["disease"]
    assert set(d["per_model"]) == {"xgboost", "catboost", "random_forest", "mlp", "ensemble", "soft_voting"}
    assert d["metrics"]["balanced_accuracy"]["value"] > 0.75
    assert result.model.disease.meta is not None and result.model.subtype.meta is not None
    pred = pm.predict_two_stage(result.model, table)
    assert np.allclose(pred.filter(like="p_state_").sum(axis=1), 1)


def test_bootstrap_zero_gives_no_intervals():
    result = train(make_table(n_unlabelled=0), {"bootstrap": 0, "cv_repeats": 1})
    for entry in result.metrics["stages"]["disease"]["metrics"].values():
        assert entry["ci95"] is None
