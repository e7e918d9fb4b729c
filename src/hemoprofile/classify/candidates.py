"""CTC candidates of one slide: every cell whose CTC score passes the candidate threshold, ranked by
score, with what a reviewer needs to judge it (``results/<slide>/candidates.parquet``).

Columns (one row per candidate, best first):

* ``slide``, ``cell_id`` (the key everywhere), ``rank`` (1 = highest score), ``row`` (the cell's row in
  cells.parquet / patches.zarr, so the review page finds its patch without a join);
* ``p_ctc_CTC`` (the ctc classifier's score) and ``p_ctc_calibrated`` (the calibrated probability,
  :mod:`hemoprofile.classify.calibration`; NaN without a calibration);
* position (``y``, ``x`` px and ``y_um``, ``x_um``) and the features of :data:`REVIEW_FEATURES` that the
  slide's cells.parquet has (size, shape, marker intensities);
* ``gate_label`` and ``gate_ctc`` (the CK+ CD45- DAPI+ gate's verdict, :mod:`hemoprofile.features.gating`;
  missing gate column: empty label, ``gate_ctc`` False);
* ``cluster_id`` (-1: in no cell cluster) and ``cluster_size`` (cells in that cluster, 1 when alone).

Memory: a 3 M-cell slide is read in record batches (:data:`BATCH_ROWS` rows) and only the columns
named here, so what is held is one batch plus the candidates. The threshold and where it came from
go into the file's metadata (``hemoprofile`` key); reading and writing the file is
:mod:`hemoprofile.io.ctc_review`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.io.ctc_review import write_candidates
from hemoprofile.io.tables import open_parquet_stream

#: Score column of the ctc classifier in predictions.parquet.
SCORE = "p_ctc_CTC"

#: cells.parquet columns copied into candidates.parquet where present (what a reviewer looks at).
REVIEW_FEATURES = ("y", "x", "y_um", "x_um", "area", "area_um2", "eccentricity", "solidity", "nucleus_ratio",
                   "mean_DAPI", "max_DAPI", "mean_CK", "max_CK", "mean_VIM", "mean_CD45", "at_border")

#: Rows per record batch when streaming a slide's tables.
BATCH_ROWS = 65536


def _batches(path: str | os.PathLike, columns: list[str]):
    """Record batches of ``columns`` of a parquet file, with an error naming the file."""
    # pre_buffer off (open_parquet_stream): with it, 350 MB of arrow memory on a 3 M-cell cells.parquet
    # against 39 MB without (bench/review_candidates.py)
    reader = open_parquet_stream(path, "parquet file")
    missing = [c for c in columns if c not in reader.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return reader.iter_batches(batch_size=BATCH_ROWS, columns=columns), reader.metadata.num_rows


def select_candidates(predictions_path: str | os.PathLike, threshold: float) -> pd.DataFrame:
    """Rows of predictions.parquet whose :data:`SCORE` is at least ``threshold``.

    Returns a table with ``row`` (position in the file), ``cell_id`` and :data:`SCORE`, in file order.
    Only those two columns are read, a batch at a time.
    """
    batches, _ = _batches(predictions_path, ["cell_id", SCORE])
    parts, offset = [], 0
    for batch in batches:
        score = batch.column(SCORE).to_numpy(zero_copy_only=False)
        hit = np.flatnonzero(score >= threshold)
        if len(hit):
            parts.append(pd.DataFrame({"row": hit + offset,
                                       "cell_id": batch.column("cell_id").to_numpy(zero_copy_only=False)[hit],
                                       SCORE: score[hit]}))
        offset += batch.num_rows
    if not parts:
        return pd.DataFrame({"row": np.zeros(0, np.int64), "cell_id": np.zeros(0, np.int64),
                             SCORE: np.zeros(0, np.float32)})
    return pd.concat(parts, ignore_index=True)


def _cell_rows(cells_path: str | os.PathLike, rows: np.ndarray, cell_ids: np.ndarray, columns: list[str]
               ) -> pd.DataFrame:
    """The given rows (ascending) of cells.parquet, ``columns`` only; checks their cell ids match."""
    batches, n_rows = _batches(cells_path, ["cell_id", *columns])
    if len(rows) and rows[-1] >= n_rows:
        raise ValueError(f"{cells_path}: has {n_rows} rows, fewer than the predictions (rerun classify)")
    parts, offset = [], 0
    for batch in batches:
        lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
        if hi > lo:
            parts.append(batch.take(pa.array(rows[lo:hi] - offset)).to_pandas())
        offset += batch.num_rows
    found = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["cell_id", *columns])
    if not np.array_equal(found["cell_id"].to_numpy(np.int64), np.asarray(cell_ids, np.int64)):
        raise ValueError(f"{cells_path}: cell ids differ from the predictions' at the same rows (rerun classify)")
    return found


def candidate_table(slide: str, cells_path: str | os.PathLike, predictions_path: str | os.PathLike,
                    threshold: float, *, clusters_path: str | os.PathLike | None = None,
                    calibration: Mapping | None = None, gate_column: str = "gate_label",
                    gate_label: str = "CTC") -> pd.DataFrame:
    """Build one slide's candidate table (the module docstring lists its columns).

    Parameters
    ----------
    slide : the slide name written into the table.
    cells_path, predictions_path : the slide's cells.parquet and predictions.parquet (same row order).
    threshold : candidates have ``p_ctc_CTC >= threshold``.
    clusters_path : the slide's clusters.parquet (for ``cluster_size``); None: sizes from the
        candidates' own cluster ids are not known and ``cluster_size`` is 1 for clustered cells too.
    calibration : a calibration (:func:`hemoprofile.classify.calibration.fit_calibration`) that gives
        ``p_ctc_calibrated``; None: NaN.
    gate_column, gate_label : the gating column of cells.parquet and the label of its CTC gate.

    Returns
    -------
    The ranked table (highest score first; ties by cell id).

    Example
    -------
    >>> table = candidate_table("S1", "results/S1/cells.parquet", "results/S1/predictions.parquet", 0.9)  # doctest: +SKIP
    """
    chosen = select_candidates(predictions_path, threshold)
    names = pq.read_schema(cells_path).names
    columns = [c for c in (*REVIEW_FEATURES, "cluster_id", gate_column) if c in names]
    cells = _cell_rows(cells_path, chosen["row"].to_numpy(np.int64), chosen["cell_id"].to_numpy(), columns)
    table = pd.DataFrame({"slide": pd.Series([slide] * len(chosen), dtype=object),
                          "cell_id": chosen["cell_id"].to_numpy(np.int64),
                          "row": chosen["row"].to_numpy(np.int64),
                          SCORE: chosen[SCORE].to_numpy(np.float32)})
    if calibration is not None:
        from hemoprofile.classify.calibration import apply_calibration

        table["p_ctc_calibrated"] = apply_calibration(calibration, table[SCORE].to_numpy()).astype(np.float32)
    else:
        table["p_ctc_calibrated"] = np.full(len(table), np.nan, np.float32)
    for c in columns:
        if c not in ("cluster_id", gate_column):
            table[c] = cells[c].to_numpy()
    labels = cells[gate_column].astype(object).to_numpy() if gate_column in cells else np.full(len(table), "", object)
    table["gate_label"] = np.array(["" if v is None else str(v) for v in labels], dtype=object)
    table["gate_ctc"] = table["gate_label"].to_numpy() == gate_label
    cluster = cells["cluster_id"].to_numpy(np.int64) if "cluster_id" in cells else np.full(len(table), -1, np.int64)
    table["cluster_id"] = cluster
    table["cluster_size"] = _cluster_sizes(clusters_path, cluster)
    table = table.sort_values([SCORE, "cell_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table.insert(2, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table


def _cluster_sizes(clusters_path, cluster_ids: np.ndarray) -> np.ndarray:
    """Cells in each candidate's cell cluster (1 for a cell in none) from clusters.parquet's ``size``."""
    sizes = np.ones(len(cluster_ids), np.int64)
    clustered = cluster_ids >= 0
    if clusters_path and clustered.any():
        table = pq.read_table(clusters_path, columns=["cluster_id", "size"]).to_pandas()
        lookup = pd.Series(table["size"].to_numpy(np.int64), index=table["cluster_id"].to_numpy(np.int64))
        found = lookup.reindex(cluster_ids[clustered]).to_numpy()
        if np.isnan(found.astype(float)).any():
            raise ValueError(f"{clusters_path}: cluster ids of cells.parquet are missing (rerun extract)")
        sizes[clustered] = found.astype(np.int64)
    return sizes


def slide_candidates(slide: str, cells_path: str | os.PathLike, predictions_path: str | os.PathLike,
                     out: str | os.PathLike, *, threshold: float | str = "auto",
                     calibration_path: str | os.PathLike | None = None,
                     clusters_path: str | os.PathLike | None = None, gate_column: str = "gate_label") -> pd.DataFrame:
    """The ``ctc_candidates`` stage: one slide's candidates.parquet.

    ``threshold`` is a ``p_ctc_CTC`` value, or ``"auto"``: the threshold (and the calibration giving
    ``p_ctc_calibrated``) of ``calibration_path`` (:func:`hemoprofile.classify.calibration.calibrate_ctc`).
    Returns the table written.
    """
    from hemoprofile.classify.calibration import read_calibration

    calibration = None
    if threshold == "auto":
        if not calibration_path:
            raise ValueError("ctc.candidate_threshold 'auto' needs the calibration file (rule calibrate_ctc)")
        chosen = read_calibration(calibration_path)
        value, calibration, source = float(chosen["threshold"]), chosen["calibration"], f"auto: {calibration_path}"
    else:
        value, source = float(threshold), "ctc.candidate_threshold"
    table = candidate_table(slide, cells_path, predictions_path, value, clusters_path=clusters_path,
                            calibration=calibration, gate_column=gate_column)
    write_candidates(table, out, threshold=value, source=source)
    return table
