"""Patient-model settings: defaults from the config schema, deep merge, checks naming the bad key."""

import pytest

from hemoprofile.config import section_defaults
from hemoprofile.patients.settings import default_settings, resolve_settings


def test_resolve_settings_deep_merges_without_touching_defaults():
    s = resolve_settings({"cv_folds": 4, "smote": {"enabled": False}, "models": {"mlp": {"hidden": [8, 4]}}})
    assert s["cv_folds"] == 4 and s["smote"] == {"enabled": False, "k_neighbors": 3}
    assert s["models"]["mlp"] == {"hidden": [8, 4], "alpha": 0.001, "max_iter": 2000}
    defaults = default_settings()
    assert s["models"]["xgboost"] == defaults["models"]["xgboost"]
    assert defaults["cv_folds"] == 5 and defaults["models"]["mlp"]["hidden"] == [32]
    assert resolve_settings(None) == resolve_settings({})


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
        resolve_settings(cfg)


def test_defaults_are_the_schemas_in_the_order_outputs_list_them():
    """The schema's patient_model section less ``model`` (the workflow's model file), with the top-level
    keys in the order metrics.json and saved models have always listed them (the order is part of the
    bytes of metrics.json)."""
    schema = section_defaults("patient_model")
    assert schema.pop("model") == ""
    s = resolve_settings(None)
    assert s == schema == default_settings()
    assert list(s) == ["control_label", "cv_folds", "cv_repeats", "bootstrap", "threads", "smote", "models",
                       "stacking"]
    assert list(s["models"]) == ["xgboost", "catboost", "random_forest", "mlp"]
    with pytest.raises(ValueError, match=r"patient_model\.model: unknown key"):
        resolve_settings({"model": ""})
