"""Per-patient cell–cell interaction features from the ``interaction`` stage's outputs
(``<results>/cohort/interaction/slides.parquet`` and ``predictions.parquet``, see
:mod:`hemoprofile.interaction.cohort`), merged into the patient table by :func:`add_interaction_features`.

Every feature comes from what the pipeline measures on the slide (the segmentation and the regressor's
out-of-fold prediction), never from the synthetic ground truth, so it means the same on real slides.
The columns carry the prefix :data:`PREFIX`; the patient model leaves them out unless
``interaction.patient_model`` is true (:func:`hemoprofile.patients.table.feature_columns`), so turning the
interaction stage on does not silently change the patient model's figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PREFIX = "interaction_"

#: Column -> description (patients_columns.tsv and the parquet field metadata).
INTERACTION_COLUMNS = {
    "interaction_contacts_per_1000_cells": "touching cell pairs (labels 8-adjacent, segmentation) per 1000 "
                                           "segmented cells, over all the patient's slides",
    "interaction_ctc_leukocyte_contacts_per_ctc": "touching pairs of a predicted CTC and another cell, per "
                                                  "predicted CTC (NaN: no predicted CTC)",
    "interaction_predicted_contacts_mean": "mean over the patient's random windows of the CNN's predicted "
                                           "contacts per window (out of fold: from a model that never saw "
                                           "the patient; interaction.window_size px windows)",
}


def interaction_patient_features(slides: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per patient of :data:`INTERACTION_COLUMNS` (plus ``patient``).

    Parameters
    ----------
    slides : slides.parquet (patient, n_cells, n_ctc, contacts, ctc_leukocyte_contacts per slide).
    predictions : predictions.parquet (patient, kind, pred_cnn per window).

    Example
    -------
    >>> s = pd.DataFrame({"patient": ["a", "a"], "n_cells": [500, 500], "n_ctc": [0, 2], "contacts": [30, 20],
    ...                   "ctc_leukocyte_contacts": [0, 1]})
    >>> p = pd.DataFrame({"patient": ["a", "a"], "kind": ["random", "cluster"], "pred_cnn": [1.5, 4.0]})
    >>> row = interaction_patient_features(s, p).iloc[0]
    >>> [float(row[c]) for c in INTERACTION_COLUMNS]
    [50.0, 0.5, 1.5]
    """
    s = slides.assign(patient=slides["patient"].astype(str))
    sums = s.groupby("patient")[["n_cells", "n_ctc", "contacts", "ctc_leukocyte_contacts"]].sum(min_count=1)
    out = pd.DataFrame({"patient": sums.index.astype(str)})
    n_cells, n_ctc = sums["n_cells"].to_numpy(np.float64), sums["n_ctc"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[PREFIX + "contacts_per_1000_cells"] = np.where(n_cells > 0, 1000.0 * sums["contacts"].to_numpy(np.float64)
                                                           / n_cells, np.nan)
        out[PREFIX + "ctc_leukocyte_contacts_per_ctc"] = np.where(
            n_ctc > 0, sums["ctc_leukocyte_contacts"].to_numpy(np.float64) / n_ctc, np.nan)
    random = predictions[predictions["kind"].astype(str) == "random"]
    mean = random.groupby(random["patient"].astype(str))["pred_cnn"].mean()
    out[PREFIX + "predicted_contacts_mean"] = out["patient"].map(mean).astype(np.float64)
    return out.reset_index(drop=True)


def add_interaction_features(table: pd.DataFrame, slides: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The patient table with :data:`INTERACTION_COLUMNS` appended (NaN for patients without slides,
    e.g. single-cell collections).

    Example
    -------
    >>> t = pd.DataFrame({"patient": ["a", "b"], "n_cells": [1000, 50]})
    >>> s = pd.DataFrame({"patient": ["a"], "n_cells": [1000], "n_ctc": [0], "contacts": [12],
    ...                   "ctc_leukocyte_contacts": [0]})
    >>> p = pd.DataFrame({"patient": ["a"], "kind": ["random"], "pred_cnn": [2.0]})
    >>> add_interaction_features(t, s, p)["interaction_contacts_per_1000_cells"].tolist()
    [12.0, nan]
    """
    feats = interaction_patient_features(slides, predictions)
    feats = feats.set_index("patient")
    out = table.copy()
    key = out["patient"].astype(str)
    for column in INTERACTION_COLUMNS:
        out[column] = key.map(feats[column]).astype(np.float64)
    return out
