"""Reading the report's input files without raising: each reader returns ``(value, None)``, or
``(None, why)`` with a sentence the report shows ("not available: <why>") when the file is not given,
missing or unreadable.

Example
-------
>>> try_read_json(None, "embedding metrics")
(None, 'no embedding metrics given')
>>> try_read_table("/nonexistent/patients.parquet", "patient table")
(None, 'patient table /nonexistent/patients.parquet does not exist')
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pandas as pd
import pyarrow.parquet as pq


def have(path) -> bool:
    """Whether ``path`` is given and exists."""
    return bool(path) and os.path.exists(path)


def why_missing(path, what: str) -> str:
    """Why ``what`` at ``path`` cannot be shown: not given, or not on disk."""
    return f"no {what} given" if not path else f"{what} {path} does not exist"


def try_read_json(path, what: str) -> tuple[dict | None, str | None]:
    """A JSON file, or None and why."""
    if not have(path):
        return None, why_missing(path, what)
    try:
        with open(path) as handle:
            return json.load(handle), None
    except (OSError, ValueError) as err:
        return None, f"{what} {path} is not readable JSON ({err})"


def try_read_table(path, what: str, columns: Sequence[str] | None = None,
                   categorical: Sequence[str] = ()) -> tuple[pd.DataFrame | None, str | None]:
    """A parquet table (or TSV for ``.tsv``), or None and why; with ``columns``, only those it has
    (``prefix*``: every column starting with prefix); the ``categorical`` ones it has are read
    dictionary-encoded (pandas categoricals: a byte or so per row instead of a Python string)."""
    if not have(path):
        return None, why_missing(path, what)
    try:
        if str(path).endswith((".tsv", ".txt")):
            return pd.read_csv(path, sep="\t"), None
        names = pq.read_schema(path).names
        wanted = None if columns is None else [
            n for n in names if any(n == c or (c.endswith("*") and n.startswith(c[:-1])) for c in columns)]
        dictionary = [c for c in categorical if c in (wanted if wanted is not None else names)]
        return pq.read_table(path, columns=wanted, read_dictionary=dictionary or None).to_pandas(), None
    except Exception as err:  # pyarrow and pandas raise many types for a broken file
        return None, f"{what} {path} is not readable ({type(err).__name__}: {err})"
