"""Patient-model settings (config section ``patient_model``): defaults read from the config schema,
overrides deep-merged and checked by :func:`resolve_settings`."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from hemoprofile.config import section_defaults

#: Top-level order of the resolved settings, the order metrics.json and saved models have always listed
#: them in (the schema lists ``stacking`` before ``smote``); keys the schema adds later follow.
_KEY_ORDER = ("control_label", "cv_folds", "cv_repeats", "bootstrap", "threads", "smote", "models", "stacking")

#: Checks of each ensemble member's settings.
_MODEL_PARAMS = {
    "xgboost": {"n_estimators": "int", "max_depth": "int", "learning_rate": "positive"},
    "catboost": {"iterations": "int", "depth": "int", "learning_rate": "positive"},
    "random_forest": {"n_estimators": "int", "min_samples_leaf": "int"},
    "mlp": {"hidden": "int_list", "alpha": "non_negative", "max_iter": "int"},
}


def default_settings() -> dict:
    """The patient-model defaults, read from the config schema (a fresh copy).

    The schema's ``patient_model`` section without ``model``: that key names an existing model file for
    the workflow to score with, it is not a training setting.

    Example
    -------
    >>> s = default_settings()
    >>> list(s)
    ['control_label', 'cv_folds', 'cv_repeats', 'bootstrap', 'threads', 'smote', 'models', 'stacking']
    >>> s["cv_folds"], s["smote"], s["models"]["mlp"]
    (5, {'enabled': True, 'k_neighbors': 3}, {'hidden': [32], 'alpha': 0.001, 'max_iter': 2000})
    """
    schema = section_defaults("patient_model")
    schema.pop("model", None)
    ordered = {key: schema.pop(key) for key in _KEY_ORDER if key in schema}
    return {**ordered, **schema}


def resolve_settings(cfg: Mapping | None) -> dict:
    """Complete patient-model settings: ``cfg`` deep-merged over :func:`default_settings`, validated.

    Parameters
    ----------
    cfg : mapping or None
        The config section ``patient_model`` without ``model`` (any subset of the defaults' keys, at
        any depth).

    Returns
    -------
    dict
        A new dict.

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
    out = default_settings()
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
