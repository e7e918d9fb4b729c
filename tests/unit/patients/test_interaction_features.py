"""hemoprofile.patients.interaction_features: per-patient interaction columns from known slide totals and
window predictions, described in the table's column glossary, and kept out of the patient model's
features unless asked for."""

import numpy as np
import pandas as pd
import pytest

from hemoprofile.patients.aggregate import table_descriptions
from hemoprofile.patients.interaction_features import (INTERACTION_COLUMNS, add_interaction_features,
                                                       interaction_patient_features)
from hemoprofile.patients.table import feature_columns


@pytest.fixture
def outputs():
    slides = pd.DataFrame({"slide": ["A1", "A2", "B1"], "patient": ["A", "A", "B"], "n_cells": [400.0, 600.0, 500.0],
                           "n_ctc": [0.0, 4.0, 0.0], "contacts": [20.0, 40.0, 5.0],
                           "ctc_leukocyte_contacts": [0.0, 2.0, 0.0]})
    predictions = pd.DataFrame({"patient": ["A", "A", "A", "B", "B"],
                                "kind": ["random", "random", "cluster", "random", "cluster"],
                                "pred_cnn": [1.0, 3.0, 9.0, 0.5, 7.0]})
    return slides, predictions


def test_features_pool_the_patients_slides(outputs):
    feats = interaction_patient_features(*outputs).set_index("patient")
    assert feats.loc["A", "interaction_contacts_per_1000_cells"] == pytest.approx(60.0)   # 60 / 1000 cells
    assert feats.loc["B", "interaction_contacts_per_1000_cells"] == pytest.approx(10.0)
    assert feats.loc["A", "interaction_ctc_leukocyte_contacts_per_ctc"] == pytest.approx(0.5)
    assert np.isnan(feats.loc["B", "interaction_ctc_leukocyte_contacts_per_ctc"])        # no CTC
    # random windows only: cluster windows are placed where contacts are, not a sample of the slide
    assert feats.loc["A", "interaction_predicted_contacts_mean"] == pytest.approx(2.0)
    assert feats.loc["B", "interaction_predicted_contacts_mean"] == pytest.approx(0.5)


def test_added_columns_are_described_and_out_of_the_model_unless_asked(outputs):
    table = pd.DataFrame({"patient": ["A", "B", "C"], "condition": ["control", "disease_a", "control"],
                          "n_slides": [2, 1, 1], "n_cells": [1000, 500, 30], "frac_latent_0": [0.2, 0.3, 0.1]})
    out = add_interaction_features(table, *outputs)
    assert list(out.columns) == list(table.columns) + list(INTERACTION_COLUMNS)
    assert np.isnan(out.loc[2, "interaction_contacts_per_1000_cells"])                    # patient without slides
    docs = table_descriptions(out)
    assert all(docs[c] == INTERACTION_COLUMNS[c] for c in INTERACTION_COLUMNS)
    assert feature_columns(out, ["interaction_"]) == ["frac_latent_0"]
    assert feature_columns(out) == ["frac_latent_0", *INTERACTION_COLUMNS]
