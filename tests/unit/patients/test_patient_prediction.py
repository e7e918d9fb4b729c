"""Scoring patients with a trained two-stage model, and the model file."""

import pickle
import sys
import types

import joblib
import numpy as np
import pytest
from pandas.testing import assert_frame_equal

from hemoprofile.patients import ensemble
from hemoprofile.patients.ensemble import library_versions
from hemoprofile.patients.prediction import load_model, predict_two_stage, save_model


def test_predict_scores_unlabelled_rows(learnable):
    table, result = learnable
    pred = predict_two_stage(result.model, table)
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
    assert_frame_equal(predict_two_stage(result.model, shuffled), pred)
    with pytest.raises(ValueError, match="missing from the table: f7"):
        predict_two_stage(result.model, table.drop(columns=["f7"]))


def test_save_load_round_trip(learnable, tmp_path):
    table, result = learnable
    path = tmp_path / "models" / "patient_model.joblib"
    save_model(path, result.model)
    loaded = load_model(path)
    assert loaded.features == result.model.features and loaded.versions == library_versions()
    assert_frame_equal(predict_two_stage(loaded, table), predict_two_stage(result.model, table),
                       check_exact=True)


def test_load_model_warns_on_version_mismatch_and_names_bad_files(learnable, tmp_path):
    _, result = learnable
    path = tmp_path / "m.joblib"
    save_model(path, result.model)
    payload = joblib.load(path)
    payload["versions"]["xgboost"] = "0.1"
    joblib.dump(payload, path)
    with pytest.warns(UserWarning, match=r"xgboost 0\.1 \(installed"):
        assert load_model(path).subtypes == ["disease_a", "disease_b"]
    with pytest.raises(ValueError, match="missing.joblib: no such file"):
        load_model(tmp_path / "missing.joblib")
    corrupt = tmp_path / "corrupt.joblib"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.joblib: cannot be read"):
        load_model(corrupt)
    other = tmp_path / "other.joblib"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="other.joblib: not a hemoprofile-patient-model"):
        load_model(other)


def test_model_files_from_before_the_package_layout_load(learnable, tmp_path, monkeypatch):
    """Files written when the model classes lived in hemoprofile.patient_model still load and predict."""
    table, result = learnable
    former = types.ModuleType("hemoprofile.patient_model")
    former.StageModel, former.TwoStageModel = ensemble.StageModel, ensemble.TwoStageModel
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "hemoprofile.patient_model", former)
        m.setattr(ensemble.StageModel, "__module__", "hemoprofile.patient_model")
        m.setattr(ensemble.TwoStageModel, "__module__", "hemoprofile.patient_model")
        save_model(tmp_path / "old.pkl", result.model)
    assert b"hemoprofile.patient_model" in (tmp_path / "old.pkl").read_bytes()
    assert "hemoprofile.patient_model" not in sys.modules
    loaded = load_model(tmp_path / "old.pkl")
    assert "hemoprofile.patient_model" not in sys.modules
    assert isinstance(loaded, ensemble.TwoStageModel) and isinstance(loaded.disease, ensemble.StageModel)
    assert_frame_equal(predict_two_stage(loaded, table), predict_two_stage(result.model, table), check_exact=True)
