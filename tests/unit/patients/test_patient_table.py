"""The patient table as the patient model reads it: feature columns and labelled rows."""

import numpy as np
import pandas as pd
from helpers.patient_tables import make_table

from hemoprofile.patients.table import feature_columns, labelled_mask


def test_feature_columns_rule():
    t = make_table(n_features=5).drop(columns=["f3", "f4"])
    t["n_cells"] = 100
    t["count_B"] = 5
    t["frac_B"] = 0.1
    t["flag"] = True
    t["note"] = "x"
    assert feature_columns(t) == ["f0", "f1", "f2", "frac_B"]


def test_labelled_mask():
    t = pd.DataFrame({"condition": ["control", " ", np.nan, "UNKNOWN", "disease_a", None]})
    assert labelled_mask(t).tolist() == [True, False, False, False, True, False]
