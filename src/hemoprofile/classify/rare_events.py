"""Rare-event figures of CTC candidate rules against ground truth (synthetic slides): recall of true
CTCs and false candidates per million leukocytes, the two figures that decide a reviewer's workload.

Segmented objects are matched to truth by centroid (:func:`hemoprofile.io.truth.match_truth`):

* **recall** counts true CTCs, not objects: its denominator is every CTC in the slides' truth, found by
  segmentation or not, and a CTC counts as found when at least one object on it is flagged. CTCs that no
  object lies on are lost to segmentation; :func:`rule_figures` reports them apart (``ctc_segmented``).
* **false candidates** are flagged objects that lie on no true CTC (leukocytes, look-alikes, debris, and
  objects on background); their rate is per million such objects (the same "leukocytes" as
  :mod:`hemoprofile.classify.calibration`: what a reviewer would have to look at), with Garwood's interval.

Intervals: Clopper-Pearson for recall, Garwood for the false-candidate rate
(:mod:`hemoprofile.rates`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from hemoprofile.io.truth import match_truth
from hemoprofile.rates import proportion_interval, rate_per_million

#: ``source`` of an object that lies on no true cell.
BACKGROUND = "background"
#: The truth columns :func:`objects_with_truth` needs.
TRUTH_NEEDED = ("cell_id", "cell_type", "lookalike", "ctc_subtype", "cluster_id")


def objects_with_truth(cells: pd.DataFrame, truth_labels_path: str | os.PathLike,
                       truth_cells: pd.DataFrame) -> pd.DataFrame:
    """One row per segmented object of one slide with the true cell under its centroid.

    Parameters
    ----------
    cells : the slide's segmented objects (``y``, ``x`` centroids in pixels; other columns are kept).
    truth_labels_path : the slide's ``truth_labels.zarr``.
    truth_cells : the slide's truth_cells.parquet rows (:data:`TRUTH_NEEDED` columns).

    Returns
    -------
    ``cells`` with ``truth_id`` (0: background), ``is_ctc``, ``source`` (the look-alike kind when the true
    cell is one, else its cell type, else :data:`BACKGROUND`).
    """
    missing = [c for c in TRUTH_NEEDED if c not in truth_cells.columns]
    if missing:
        raise ValueError(f"truth table lacks column(s) {missing} (has {list(truth_cells.columns)})")
    ids = match_truth(cells["y"].to_numpy(), cells["x"].to_numpy(), truth_labels_path)
    truth = truth_cells.set_index("cell_id")
    position = truth.index.get_indexer(ids)
    on_cell = position >= 0
    cell_type = np.full(len(ids), BACKGROUND, dtype=object)
    cell_type[on_cell] = truth["cell_type"].to_numpy()[position[on_cell]]
    lookalike = np.full(len(ids), "", dtype=object)
    lookalike[on_cell] = truth["lookalike"].fillna("").to_numpy()[position[on_cell]]
    out = cells.copy()
    out["truth_id"] = np.where(on_cell, ids, 0).astype(np.int64)
    out["is_ctc"] = cell_type == "CTC"
    out["source"] = np.where(lookalike != "", lookalike, cell_type)
    return out


def rule_figures(objects: pd.DataFrame, flagged: np.ndarray, truth_ctcs: pd.DataFrame) -> dict:
    """Recall and false candidates of one rule over many slides.

    Parameters
    ----------
    objects : :func:`objects_with_truth` rows of every slide (``slide``, ``truth_id``, ``is_ctc``).
    flagged : bool per object, True where the rule makes it a candidate.
    truth_ctcs : every true CTC of those slides (``slide``, ``cell_id``).

    Returns
    -------
    dict: ``ctc`` (true CTCs), ``ctc_segmented`` (with an object on them), ``found`` and ``recall`` with
    ``recall_ci95``; ``candidates``, ``false``, ``objects_not_ctc``, ``false_per_million`` with
    ``false_per_million_ci95``.

    Example
    -------
    >>> objects = pd.DataFrame({"slide": ["a"] * 4, "truth_id": [1, 2, 3, 0],
    ...                         "is_ctc": [True, False, False, False]})
    >>> r = rule_figures(objects, np.array([True, True, False, False]),
    ...                  pd.DataFrame({"slide": ["a", "a"], "cell_id": [1, 9]}))
    >>> r["found"], r["ctc"], r["false"], r["false_per_million"]
    (1, 2, 1, 333333.3333333333)
    """
    flagged = np.asarray(flagged, bool)
    if len(flagged) != len(objects):
        raise ValueError(f"{len(flagged)} flags for {len(objects)} objects")
    is_ctc = objects["is_ctc"].to_numpy(bool)
    keys = _keys(truth_ctcs["slide"], truth_ctcs["cell_id"])
    segmented = np.isin(keys, _keys(objects["slide"][is_ctc], objects["truth_id"][is_ctc]))
    found = np.isin(keys, _keys(objects["slide"][is_ctc & flagged], objects["truth_id"][is_ctc & flagged]))
    recall, low, high = proportion_interval(int(found.sum()), len(keys))
    false = int((flagged & ~is_ctc).sum())
    negatives = int((~is_ctc).sum())
    rate, r_low, r_high = (float(v) for v in rate_per_million(false, negatives))
    return {"ctc": len(keys), "ctc_segmented": int(segmented.sum()), "found": int(found.sum()),
            "recall": recall, "recall_ci95": [low, high], "candidates": int(flagged.sum()), "false": false,
            "objects_not_ctc": negatives, "false_per_million": rate, "false_per_million_ci95": [r_low, r_high]}


def recall_by_group(objects: pd.DataFrame, flagged: np.ndarray, truth_ctcs: pd.DataFrame,
                    groups: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Recall with its interval for subsets of the true CTCs (``groups``: name -> bool per
    ``truth_ctcs`` row; for example subtype EMT, in a cluster)."""
    rows = []
    for name, member in groups.items():
        member = np.asarray(member, bool)
        r = rule_figures(objects, flagged, truth_ctcs[member])
        rows.append({"group": name, "ctc": r["ctc"], "found": r["found"], "recall": r["recall"],
                     "recall_low": r["recall_ci95"][0], "recall_high": r["recall_ci95"][1]})
    return pd.DataFrame(rows)


def false_by_source(objects: pd.DataFrame, flagged: np.ndarray) -> pd.Series:
    """Flagged non-CTC objects counted by what they are (``source``: a look-alike kind, a leukocyte
    type, an artefact type or background), most first."""
    flagged = np.asarray(flagged, bool) & ~objects["is_ctc"].to_numpy(bool)
    return objects.loc[flagged, "source"].value_counts().rename("false_candidates")


def _keys(slides, ids) -> np.ndarray:
    """``slide<TAB>id`` strings: one key per (slide, cell id) pair."""
    return np.char.add(np.char.add(np.asarray(slides, dtype=str), "\t"), np.asarray(ids, np.int64).astype(str))
