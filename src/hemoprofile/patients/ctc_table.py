"""The cohort's CTC table (``results/cohort/ctc_review.tsv``): per slide and per patient, the candidates,
what the review decided, and CTCs per million leukocytes with the exact (Garwood) Poisson 95 % interval.

A slide's CTC count is its reviewed CTCs (decision ``CTC``) when it has a review CSV, else its
candidates (not yet reviewed: an upper figure that includes the false candidates). A patient's row
pools its slides' counts and cells. Only footers and the small candidate tables are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile.io import atomic_output
from hemoprofile.io.ctc_review import read_candidates, read_review, review_counts
from hemoprofile.rates import rate_per_million

#: Columns of the table, in order, with their meaning (the report's "CTC review" section shows them).
COLUMNS = {
    "level": "'slide' or 'patient'",
    "patient": "patient id (sample sheet)",
    "slide": "slide name ('' on a patient row)",
    "condition": "condition (sample sheet)",
    "n_cells": "segmented cells",
    "candidates": "CTC candidates (p_ctc_CTC >= the candidate threshold)",
    "reviewed": "candidates or other cells with a decision in the review CSV",
    "reviewed_ctc": "cells the reviewer marked CTC",
    "reviewed_not_ctc": "cells the reviewer marked not CTC",
    "unsure": "cells the reviewer marked unsure (not counted as CTC)",
    "unreviewed": "candidates without a decision (on reviewed slides)",
    "reviewed_slides": "slides with a review CSV (1/0 on a slide row)",
    "ctc_count": "CTCs counted: reviewed CTCs on reviewed slides, candidates elsewhere",
    "n_leukocytes": "n_cells - ctc_count",
    "ctc_per_million": "ctc_count per million leukocytes",
    "ctc_per_million_low": "lower end of the exact (Garwood) Poisson 95 % interval of ctc_per_million",
    "ctc_per_million_high": "upper end of the exact (Garwood) Poisson 95 % interval of ctc_per_million",
}


def slide_ctc_row(slide: str, cells_path: str | os.PathLike, candidates_path: str | os.PathLike,
                  review_path: str | os.PathLike | None = None) -> dict:
    """One slide's counts (the :data:`COLUMNS` that are counts), reading the cells' footer and ids only
    when a review has to be checked against them."""
    n_cells = pq.read_metadata(cells_path).num_rows
    candidate_ids = read_candidates(candidates_path, ["cell_id"])["cell_id"].to_numpy(np.int64)
    review = None
    if review_path:
        cell_ids = pq.read_table(cells_path, columns=["cell_id"]).column(0).to_numpy()
        review = read_review(review_path, slide, cell_ids)
    counts = review_counts(review, candidate_ids)
    ctc = counts["reviewed_ctc"] if review is not None else len(candidate_ids)
    if review is None:
        counts["unreviewed"] = 0  # on an unreviewed slide every candidate counts; "unreviewed" is for reviews
    return {"slide": slide, "n_cells": n_cells, "candidates": len(candidate_ids), **counts,
            "reviewed_slides": int(review is not None), "ctc_count": ctc}


def ctc_cohort_table(samples: pd.DataFrame, files: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """Per-slide and per-patient CTC rows (:data:`COLUMNS`), slides first, then patients.

    Parameters
    ----------
    samples : sample sheet rows (slide, patient, condition) of the image slides.
    files : slide -> {"cells", "candidates", optional "review"}.

    Example
    -------
    >>> table = ctc_cohort_table(samples, {"S1": {"cells": "c.parquet", "candidates": "k.parquet"}})  # doctest: +SKIP
    """
    rows = []
    for _, s in samples.iterrows():
        slide = str(s["slide"])
        f = files[slide]
        rows.append({"level": "slide", "patient": str(s["patient"]), "condition": str(s["condition"]),
                     **slide_ctc_row(slide, f["cells"], f["candidates"], f.get("review"))})
    slides = pd.DataFrame(rows)
    if slides.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    counts = [c for c in COLUMNS if c not in ("level", "patient", "slide", "condition", "n_leukocytes")
              and not c.startswith("ctc_per_million")]
    patients = slides.groupby(["patient", "condition"], sort=True, as_index=False)[counts].sum()
    patients.insert(0, "level", "patient")
    patients["slide"] = ""
    table = pd.concat([slides, patients], ignore_index=True)
    table["n_leukocytes"] = table["n_cells"] - table["ctc_count"]
    rate, low, high = rate_per_million(table["ctc_count"].to_numpy(), table["n_leukocytes"].to_numpy())
    table["ctc_per_million"], table["ctc_per_million_low"], table["ctc_per_million_high"] = rate, low, high
    return table[list(COLUMNS)]


def write_ctc_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the cohort CTC table as a TSV atomically."""
    with atomic_output(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
