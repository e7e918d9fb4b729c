"""Ground truth of synthetic slides: which simulated cell lies under each segmented cell's centroid."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from hemoprofile.io.ome_zarr import open_ome_zarr


def match_truth(cell_y: np.ndarray, cell_x: np.ndarray, truth_labels_path: str | os.PathLike) -> np.ndarray:
    """The ground-truth cell id under each centroid (0: background or off the image).

    Reads ``truth_labels.zarr`` one chunk at a time (only chunks holding centroids), so memory stays at a
    chunk whatever the slide size. The centroid pixel is ``floor(y + 0.5), floor(x + 0.5)``, the
    convention of :mod:`hemoprofile.features.extract`.
    """
    array = open_ome_zarr(truth_labels_path).array
    h, w = array.shape
    cy, cx = array.chunks
    yi = np.floor(np.asarray(cell_y, float) + 0.5).astype(np.int64)
    xi = np.floor(np.asarray(cell_x, float) + 0.5).astype(np.int64)
    out = np.zeros(len(yi), np.int64)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    idx = np.flatnonzero(inside)
    chunk = (yi[idx] // cy) * ((w + cx - 1) // cx) + xi[idx] // cx
    order = np.argsort(chunk, kind="stable")
    idx, chunk = idx[order], chunk[order]
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    for group in np.split(idx, bounds):
        if not len(group):
            continue
        y0 = (yi[group[0]] // cy) * cy
        x0 = (xi[group[0]] // cx) * cx
        block = np.asarray(array[y0:min(y0 + cy, h), x0:min(x0 + cx, w)])
        out[group] = block[yi[group] - y0, xi[group] - x0]
    return out


def truth_cell_types(cells: pd.DataFrame, truth_labels_path: str | os.PathLike, truth_cells: pd.DataFrame,
                     slide: str) -> np.ndarray:
    """The ground-truth cell type of each segmented cell (``None`` where its centroid is on background).

    Parameters
    ----------
    cells : the slide's cells.parquet (needs ``y`` and ``x`` centroid columns, pixels).
    truth_labels_path : the slide's ``truth_labels.zarr``.
    truth_cells : truth_cells.parquet (the slide's rows, or the whole cohort's: filtered by ``slide``).
    """
    for column in ("y", "x"):
        if column not in cells.columns:
            raise ValueError(f"cells of slide {slide} have no centroid column {column!r}; columns: {list(cells.columns)}")
    truth = truth_cells
    if "slide" in truth.columns:
        truth = truth[truth["slide"] == slide]
    lookup = dict(zip(truth["cell_id"].to_numpy(np.int64), truth["cell_type"].astype(str)))
    ids = match_truth(cells["y"].to_numpy(), cells["x"].to_numpy(), truth_labels_path)
    return np.array([lookup.get(int(i)) if i else None for i in ids], dtype=object)
