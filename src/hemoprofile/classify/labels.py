"""Training labels: where each slide's cells get their label (``label_source``) and the labelled cells of
many slides gathered into memory (:func:`load_training_cells`).

Label sources (:data:`~hemoprofile.classify.settings.LABEL_SOURCES`):

- ``truth``: synthetic slides; a segmented cell takes the ground-truth cell under its centroid in
  ``truth_labels.zarr`` (:func:`hemoprofile.io.truth.match_truth`), and that cell's ``cell_type`` in
  ``truth_cells.parquet``; an object on no true cell is labelled
  :data:`~hemoprofile.vocabulary.NOT_A_CELL` (a negative for the ``ctc`` task, outside every other task);
- ``column``: a label column of cells.parquet (e.g. written by marker gating);
- ``table``: a CSV/parquet table with slide, cell_id and a label column;
- ``collection``: the ``label`` column of a collection ingested by :mod:`hemoprofile.ingest.collection`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile.classify.settings import LABEL_SOURCES
from hemoprofile.io.patches import check_slide_patches, open_patch_array, read_patch_rows
from hemoprofile.io.tables import read_cells, read_label_table
from hemoprofile.io.truth import truth_cell_types
from hemoprofile.vocabulary import NOT_A_CELL

log = logging.getLogger(__name__)


@dataclass
class SlideInput:
    """One slide's inputs to classifier training: cells.parquet, patches.zarr and where labels come from.

    ``group`` is what the split holds out (the patient, else the slide). ``truth_labels`` (truth source)
    is the slide's ``truth_labels.zarr``; the cohort's ``truth_cells.parquet`` is passed once to
    :func:`load_training_cells`.
    """

    slide: str
    cells: str
    patches: str
    group: str | None = None
    truth_labels: str | None = None


def slide_raw_labels(item: SlideInput, cells: pd.DataFrame, label_source: str, *, label_column: str = "gate_label",
                     truth_cells: pd.DataFrame | None = None, label_table: pd.DataFrame | None = None) -> np.ndarray:
    """The raw label (cell type, gate label or collection label) of each cell of one slide, or ``None``."""
    if label_source == "truth":
        if item.truth_labels is None or truth_cells is None:
            raise ValueError(f"slide {item.slide}: label_source 'truth' needs truth_labels.zarr and truth_cells.parquet")
        types = truth_cell_types(cells, item.truth_labels, truth_cells, item.slide)
        types[types == None] = NOT_A_CELL  # noqa: E711  (object array: elementwise None test)
        return types
    if label_source in ("column", "collection"):
        column = "label" if label_source == "collection" else label_column
        if column not in cells.columns:
            raise ValueError(f"{item.cells}: no label column {column!r} (label_source {label_source!r}); "
                             f"columns: {list(cells.columns)}")
        return np.array([v if isinstance(v, str) and v else None for v in cells[column]], dtype=object)
    if label_source == "table":
        if label_table is None:
            raise ValueError("label_source 'table' needs a labels table (classify.labels_table)")
        sub = label_table[label_table["slide"].astype(str) == item.slide]
        lookup = dict(zip(sub["cell_id"].to_numpy(np.int64), sub[label_column].astype(str)))
        return np.array([lookup.get(int(i)) for i in cells["cell_id"].to_numpy(np.int64)], dtype=object)
    raise ValueError(f"unknown label_source {label_source!r}; allowed: {', '.join(LABEL_SOURCES)}")


@dataclass
class TrainingCells:
    """Labelled cells gathered from slides: patches in memory plus their labels, groups and keys."""

    patches: np.ndarray
    labels: np.ndarray  # raw labels (cell type / gate label / collection label), object
    groups: np.ndarray  # patient or slide, object
    slides: np.ndarray
    cell_ids: np.ndarray
    channels: list[str]
    patch_size: int


def load_training_cells(items: Sequence[SlideInput], label_source: str, *, label_column: str = "gate_label",
                        truth_cells: str | os.PathLike | pd.DataFrame | None = None,
                        labels_table: str | os.PathLike | None = None, max_cells_per_label: int | None = None,
                        seed: int = 0, progress: Callable[[str], None] | None = None) -> TrainingCells:
    """Gather labelled cells of many slides into memory (at most ``max_cells_per_label`` per label and slide).

    The cap keeps rare classes (CTCs) whole while bounding memory for the common ones; which cells are
    kept is seeded. Unlabelled cells are skipped. All slides must share channel names and patch size.
    """
    progress = progress or (lambda m: log.info(m))
    if isinstance(truth_cells, (str, os.PathLike)):
        truth_cells = read_cells(truth_cells, ["slide", "cell_id", "cell_type"])
    label_table = read_label_table(labels_table, label_column) if labels_table else None
    rng = np.random.default_rng(seed)
    parts, channels, size = [], None, None
    for item in items:
        array, names, attributes = open_patch_array(item.patches)
        # only the columns labels need: a real slide's table has millions of rows and dozens of columns
        wanted = ["slide", "cell_id", "y", "x", "label", label_column, "patient", "group"]
        available = pq.read_schema(item.cells).names if os.path.exists(item.cells) else wanted
        cells = read_cells(item.cells, [c for c in dict.fromkeys(wanted) if c in available])
        channels, size = check_slide_patches(item, cells, array, attributes, names, channels, size)
        raw = slide_raw_labels(item, cells, label_source, label_column=label_column, truth_cells=truth_cells,
                               label_table=label_table)
        keep = []
        for value in sorted({v for v in raw if v is not None}):
            idx = np.flatnonzero(raw == value)
            if max_cells_per_label and len(idx) > max_cells_per_label:
                idx = np.sort(rng.choice(idx, max_cells_per_label, replace=False))
            keep.append(idx)
        rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
        # a collection's labels.csv may name the patient (or another group) of each cell: hold those out
        group_column = next((c for c in ("patient", "group") if c in cells.columns), None)
        groups = (cells[group_column].astype(str).to_numpy(object)[rows] if group_column
                  else np.full(len(rows), item.group or item.slide, object))
        parts.append((read_patch_rows(array, rows), raw[rows], groups,
                      np.full(len(rows), item.slide, object), cells["cell_id"].to_numpy(np.int64)[rows]))
        progress(f"{item.slide}: {len(rows)} labelled cells of {len(cells)}")
    if not parts:
        raise ValueError("no slides given for training")
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return TrainingCells(cat[0], cat[1], cat[2], cat[3], cat[4], list(channels), int(size))
