"""Fixtures of the patient-model tests."""

import pytest
from helpers.patient_tables import make_table, train


@pytest.fixture(scope="module")
def learnable():
    """A table with known truth (:func:`helpers.patient_tables.make_table`) and the model trained on it."""
    table = make_table()
    return table, train(table)
