"""The patient model's ensembles: the four members (XGBoost, CatBoost, random forest, MLP), each in an
imbalanced-learn pipeline (median imputation -> SMOTE -> [scaling] -> model), their soft vote or
stacker (:class:`StageModel`), and the two stages together (:class:`TwoStageModel`: control vs disease,
then the subtype; a patient's state and joint probabilities).

:class:`StageModel` and :class:`TwoStageModel` are what a saved model file holds (:mod:`.prediction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import catboost
import imblearn
import numpy as np
import sklearn
import xgboost
from catboost import CatBoostClassifier
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

from hemoprofile import __version__ as hemoprofile_version

#: The ensemble's models, in the order they appear in metrics and importances.
MODEL_NAMES = ("xgboost", "catboost", "random_forest", "mlp")
#: Stage names, in order.
STAGES = ("disease", "subtype")
#: Name of the positive class of stage ``disease``.
DISEASE = "disease"


def make_sampler(k_neighbors: int, seed: int) -> SMOTE:
    """The SMOTE step of a pipeline."""
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


def smote_k(y: np.ndarray, settings: dict) -> tuple[int | None, bool]:
    """SMOTE's k for these training labels (None: no SMOTE) and whether SMOTE had to be skipped."""
    if not settings["smote"]["enabled"]:
        return None, False
    k = min(settings["smote"]["k_neighbors"], int(np.bincount(y).min()) - 1)
    return (k, False) if k >= 1 else (None, True)


def make_pipeline(name: str, n_classes: int, settings: dict, seed: int, k_neighbors: int | None) -> Pipeline:
    """Impute -> SMOTE (unless ``k_neighbors`` is None) -> scale (MLP only) -> model ``name``, unfitted."""
    steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if k_neighbors is not None:
        steps.append(("smote", make_sampler(k_neighbors, seed)))
    if name == "mlp":
        steps.append(("scale", StandardScaler()))
    steps.append(("model", _make_estimator(name, n_classes, settings, seed)))
    return Pipeline(steps)


def proba(pipeline: Pipeline, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities (n, n_classes) of a fitted pipeline, columns in class-code order."""
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(pipeline.classes_, dtype=int)] = pipeline.predict_proba(X)
    return out


def stack_features(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stacker's input: the members' probabilities side by side, in :data:`MODEL_NAMES` order."""
    # Binary: one column per model (the rows sum to 1, the other column adds nothing).
    return np.hstack([p[:, 1:] if p.shape[1] == 2 else p for p in (probs[m] for m in MODEL_NAMES)])


def make_meta(seed: int) -> LogisticRegression:
    """The stacker, unfitted."""
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
        return {m: proba(self.pipelines[m], X, len(self.classes)) for m in MODEL_NAMES}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The ensemble's (n, n_classes) probabilities: soft vote, or the stacker when there is one."""
        return combine(self.model_probabilities(X), self.meta, len(self.classes))


def combine(probs: Mapping[str, np.ndarray], meta: LogisticRegression | None, n_classes: int) -> np.ndarray:
    """The ensemble's probabilities from its members': their mean (soft vote), or ``meta``'s."""
    if meta is None:
        return np.mean([probs[m] for m in MODEL_NAMES], axis=0)
    out = np.zeros((len(next(iter(probs.values()))), n_classes))
    out[:, meta.classes_] = meta.predict_proba(stack_features(probs))
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


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on.

    Example
    -------
    >>> sorted(library_versions())
    ['catboost', 'hemoprofile', 'imbalanced-learn', 'numpy', 'scikit-learn', 'xgboost']
    """
    return {"scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__, "catboost": catboost.__version__,
            "imbalanced-learn": imblearn.__version__, "numpy": np.__version__, "hemoprofile": hemoprofile_version}


def joint_probabilities(p_disease: np.ndarray, p_sub: np.ndarray) -> np.ndarray:
    """(n, 1 + n_subtypes): [1 - p_disease, p_disease * p(subtype | disease)...]."""
    return np.column_stack([1 - p_disease, p_disease[:, None] * p_sub])


def decide(p_disease: np.ndarray, p_sub: np.ndarray) -> np.ndarray:
    """State index: 0 (control) where p_disease <= 0.5, else 1 + the most probable subtype."""
    return np.where(p_disease > 0.5, p_sub.argmax(axis=1) + 1, 0)
