"""The patient table as the patient model sees it: which columns are features, which rows are
labelled, and the checked feature matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Condition values (after stripping, case-insensitive) that mark an unlabelled patient; NaN too.
UNLABELLED = ("", "unknown")
#: Columns of the patient table that are never features: identity, and counts that scale with how much
#: blood was imaged (slides x cells) rather than with the patient's biology; their normalised forms
#: (``frac_<type>``, ``ctc_per_1000``, ``cell_clusters_per_1000``, ...) are features.
NON_FEATURE_COLUMNS = frozenset({"patient", "condition", "n_slides", "n_cells", "n_leukocytes", "ctc_count",
                                 "cell_clusters", "ctc_leukocyte_clusters", "ctc_candidates",
                                 "ctc_reviewed_slides"})
#: Column prefixes that are never features (absolute per-type cell counts, see above).
NON_FEATURE_PREFIXES = ("count_",)



def feature_columns(table: pd.DataFrame, exclude_prefixes: Sequence[str] = ()) -> list[str]:
    """The feature columns of a patient table, in table order.

    Rule: every numeric (not boolean) column, except :data:`NON_FEATURE_COLUMNS` (identity, and absolute
    counts that scale with the amount of blood imaged) and columns starting with one of
    :data:`NON_FEATURE_PREFIXES` or ``exclude_prefixes``.

    Parameters
    ----------
    table : pandas.DataFrame
        The patient table.
    exclude_prefixes : sequence of str
        More prefixes to leave out (the workflow leaves out ``interaction_`` unless
        ``interaction.patient_model`` is true).

    Returns
    -------
    list of str

    Example
    -------
    >>> t = pd.DataFrame({"patient": ["a"], "condition": ["control"], "n_slides": [2], "count_B": [10],
    ...                   "frac_B": [0.1], "ctc_per_1000": [0.0], "note": ["x"], "flag": [True]})
    >>> feature_columns(t)
    ['frac_B', 'ctc_per_1000']
    """
    out = []
    for name in table.columns:
        dtype = table[name].dtype
        if (isinstance(name, str) and name not in NON_FEATURE_COLUMNS
                and not name.startswith(NON_FEATURE_PREFIXES + tuple(exclude_prefixes))
                and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            out.append(name)
    return out


def labelled_mask(table: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows with a condition label (not NaN, empty or ``unknown``).

    Example
    -------
    >>> labelled_mask(pd.DataFrame({"condition": ["control", "", None, "Unknown", "disease_a"]}))
    array([ True, False, False, False,  True])
    """
    if "condition" not in table.columns:
        raise ValueError(f"patient table: no 'condition' column (columns: {', '.join(map(str, table.columns))})")
    cond = table["condition"].astype("string").str.strip()
    return (cond.notna() & ~cond.str.lower().isin(UNLABELLED)).to_numpy(dtype=bool)


def check_patients(table: pd.DataFrame, where: str) -> None:
    """Raise (prefixed with ``where``) unless ``table`` has a ``patient`` column without repeats."""
    if "patient" not in table.columns:
        raise ValueError(f"{where}: no 'patient' column (columns: {', '.join(map(str, table.columns))})")
    dup = table["patient"][table["patient"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{where}: one row per patient expected; repeated: {', '.join(map(str, dup[:10]))}")


def feature_matrix(table: pd.DataFrame, features: Sequence[str], where: str) -> np.ndarray:
    """The (n, len(features)) float64 matrix, NaN kept; raises naming missing, non-numeric or infinite
    columns."""
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise ValueError(f"{where}: feature column(s) missing from the table: {', '.join(map(str, missing))}")
    bad = [f for f in features if not pd.api.types.is_numeric_dtype(table[f].dtype)]
    if bad:
        raise ValueError(f"{where}: feature column(s) not numeric: {', '.join(map(str, bad))}")
    X = table[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = [f for f, col in zip(features, np.isinf(X).T) if col.any()]
    if infinite:
        raise ValueError(f"{where}: feature column(s) with infinite values: {', '.join(map(str, infinite))}")
    return X
