"""Patient-level aggregation: every slide's cells, predictions, latent clusters and cell clusters ->
one row per patient (``results/cohort/patients.parquet``).

What a row holds (every column is documented in :func:`column_descriptions`, which the workflow writes
next to the table as ``patients_columns.tsv`` and into the parquet schema's field metadata):

* identity: ``patient``, ``condition`` (from the sample sheet), ``n_slides``, ``n_cells`` (segmented
  cells), ``n_leukocytes``;
* composition: each cell gets one *cell type* — ``CTC`` where the ``ctc`` classifier says so, otherwise
  the finest immune prediction available (``immune6`` > ``hierarchical`` > ``immune5`` > ``lineage``) —
  then ``count_<type>`` and ``frac_<type>`` (a fraction of the patient's leukocytes, so a few CTCs do not
  move it);
* rare events: ``ctc_count``, ``ctc_per_1000`` (per 1000 leukocytes), ``ctc_leukocyte_clusters``
  (cell clusters with at least one predicted CTC and one leukocyte), ``ctc_in_clusters_fraction``,
  ``cell_clusters`` and ``cell_clusters_per_1000``;
* morphology per type: the median over the type's cells of :data:`MORPHOLOGY_FEATURES` (area, shape,
  nuclear ratio, marker intensities), ``<feature>__<type>``; NaN where the patient has no such cell;
* latent space: ``frac_latent_<k>``, the fraction of the patient's cells in latent cluster ``k``.

Cells are pooled over a patient's slides before any median or fraction, so a patient with two slides
weighs each cell once. A slide with no cells contributes nothing but is counted in ``n_slides`` and
listed in the returned notes (the report shows them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.io import atomic_output
from hemoprofile.io.tables import read_table
from hemoprofile.vocabulary import CTC, cell_types

#: cells.parquet columns summarised per cell type (median), with what they measure.
MORPHOLOGY_FEATURES = {
    "area_um2": "cell area in µm²",
    "eccentricity": "eccentricity of the cell's fitted ellipse (0 = circle)",
    "solidity": "area / convex hull area (1 = convex)",
    "nucleus_ratio": "nuclear area / cell area",
    "mean_DAPI": "mean raw DAPI intensity over the cell (ADU)",
    "mean_CK": "mean raw CK intensity over the cell (ADU)",
    "mean_VIM": "mean raw VIM intensity over the cell (ADU)",
    "mean_CD45": "mean raw CD45 intensity over the cell (ADU)",
}

#: Cell clusters need at least this many cells to count.
MIN_CLUSTER_SIZE = 2


def _slide_cells(slide: str, files: Mapping[str, str]) -> tuple[pd.DataFrame, str]:
    """One slide's cells with their predicted type, latent cluster and cell-cluster id."""
    cells = read_table(files["cells"], ["cell_id", "cluster_id", *MORPHOLOGY_FEATURES])
    predictions = read_table(files["predictions"])
    if len(cells) != len(predictions) or not np.array_equal(cells["cell_id"], predictions["cell_id"]):
        raise ValueError(
            f"slide {slide}: {files['predictions']} has {len(predictions)} rows that do not match the "
            f"{len(cells)} cells of {files['cells']} (rerun classify for this slide)"
        )
    types, task = cell_types(predictions) if len(predictions) else (np.array([], dtype=object), "")
    out = cells.copy()
    out["cell_type"] = types
    embedding = read_table(files.get("embedding"), ["cell_id", "cluster"])
    if embedding is not None:
        if len(embedding) != len(cells) or not np.array_equal(embedding["cell_id"], cells["cell_id"]):
            raise ValueError(f"slide {slide}: {files['embedding']} rows do not match {files['cells']}")
        out["latent_cluster"] = embedding["cluster"].to_numpy()
    out["slide"] = slide
    return out, task


def _cluster_counts(cells: pd.DataFrame) -> dict[str, float]:
    """Cell clusters (>= MIN_CLUSTER_SIZE cells) and CTC-leukocyte clusters among one patient's cells."""
    clustered = cells[cells["cluster_id"] >= 0]
    n_clusters = n_ctc_clusters = n_ctc_in_clusters = 0
    if len(clustered):
        groups = clustered.groupby(["slide", "cluster_id"])["cell_type"]
        sizes = groups.size()
        n_ctc = groups.apply(lambda t: int((t == CTC).sum()))
        big = sizes >= MIN_CLUSTER_SIZE
        n_clusters = int(big.sum())
        mixed = big & (n_ctc > 0) & (n_ctc < sizes)
        n_ctc_clusters = int(mixed.sum())
        n_ctc_in_clusters = int(n_ctc[mixed].sum())
    return {"cell_clusters": n_clusters, "ctc_leukocyte_clusters": n_ctc_clusters,
            "ctc_in_mixed_clusters": n_ctc_in_clusters}


def aggregate_patients(
    samples: pd.DataFrame,
    slide_files: Mapping[str, Mapping[str, str]],
    *,
    cell_type_names: Sequence[str] | None = None,
    latent_clusters: int | None = None,
    progress: Callable[[str], object] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Aggregate slides into one row per patient.

    Parameters
    ----------
    samples : the sample sheet (columns slide, patient, condition), one row per slide.
    slide_files : slide -> {"cells": cells.parquet, "predictions": predictions.parquet, "embedding":
        embedding.parquet (optional)}; every slide of ``samples`` must be present.
    cell_type_names : the types that get count/frac/morphology columns (default: every predicted type,
        sorted, CTC last); fixing them keeps the columns the same across cohorts.
    latent_clusters : number of latent clusters (default: 1 + the largest id seen), so every
        ``frac_latent_<k>`` column exists even when no cell of the cohort fell in cluster k.
    progress : called with a line per slide (None: silent).

    Returns
    -------
    (table, notes): the patient table, sorted by patient, and human-readable notes (slides with no
    cells, the task that named cell types).
    """
    missing = [s for s in samples["slide"] if s not in slide_files]
    if missing:
        raise ValueError(f"no files given for slide(s) {missing}")
    notes: list[str] = []
    per_slide, tasks = [], set()
    for i, slide in enumerate(samples["slide"]):
        cells, task = _slide_cells(str(slide), slide_files[slide])
        if len(cells) == 0:
            notes.append(f"slide {slide}: no cells (it counts in n_slides and adds nothing else)")
        else:
            tasks.add(task)
        per_slide.append(cells)
        if progress:
            progress(f"read slide {slide} ({i + 1}/{len(samples)}, {len(cells)} cells)")
    if len(tasks) > 1:
        raise ValueError(f"slides were classified with different cell-type tasks {sorted(tasks)}; rerun classify")
    if tasks:
        notes.append(f"cell types come from the '{tasks.pop()}' classifier (CTC from 'ctc' where present)")
    all_cells = pd.concat(per_slide, ignore_index=True)
    types = list(cell_type_names) if cell_type_names is not None else sorted(
        {t for t in all_cells["cell_type"] if t != CTC}) + [CTC]
    if latent_clusters is None and "latent_cluster" in all_cells and len(all_cells):
        latent_clusters = int(all_cells["latent_cluster"].max()) + 1

    slide_patient = dict(zip(samples["slide"].astype(str), samples["patient"].astype(str)))
    all_cells["patient"] = all_cells["slide"].map(slide_patient)
    rows = []
    for patient, sheet in samples.groupby(samples["patient"].astype(str), sort=True):
        conditions = sorted({str(c) for c in sheet["condition"]})
        if len(conditions) > 1:
            raise ValueError(f"patient {patient}: slides disagree on the condition ({', '.join(conditions)})")
        cells = all_cells[all_cells["patient"] == patient]
        row = _patient_row(cells, types, latent_clusters)
        rows.append({"patient": patient, "condition": conditions[0], "n_slides": len(sheet), **row})
    table = pd.DataFrame(rows)
    order = list(column_descriptions(types, latent_clusters))
    return table[[c for c in order if c in table]], notes


def _patient_row(cells: pd.DataFrame, types: Sequence[str], latent_clusters: int | None) -> dict:
    n_cells = len(cells)
    is_ctc = (cells["cell_type"] == CTC).to_numpy()
    n_ctc = int(is_ctc.sum())
    n_leuk = n_cells - n_ctc
    row: dict[str, float] = {"n_cells": n_cells, "n_leukocytes": n_leuk}
    counts = cells["cell_type"].value_counts()
    for t in types:
        row[f"count_{t}"] = int(counts.get(t, 0))
    for t in types:
        if t != CTC:
            row[f"frac_{t}"] = row[f"count_{t}"] / n_leuk if n_leuk else np.nan
    row["ctc_count"] = n_ctc
    row["ctc_per_1000"] = 1000.0 * n_ctc / n_leuk if n_leuk else np.nan
    clusters = _cluster_counts(cells)
    row["cell_clusters"] = clusters["cell_clusters"]
    row["cell_clusters_per_1000"] = 1000.0 * clusters["cell_clusters"] / n_cells if n_cells else np.nan
    row["ctc_leukocyte_clusters"] = clusters["ctc_leukocyte_clusters"]
    row["ctc_in_clusters_fraction"] = clusters["ctc_in_mixed_clusters"] / n_ctc if n_ctc else np.nan
    for feature in MORPHOLOGY_FEATURES:
        by_type = cells.groupby("cell_type")[feature].median() if feature in cells else pd.Series(dtype=float)
        for t in types:
            row[f"{feature}__{t}"] = float(by_type.get(t, np.nan))
    if latent_clusters:
        latent = cells["latent_cluster"].value_counts() if "latent_cluster" in cells else pd.Series(dtype=float)
        for k in range(latent_clusters):
            row[f"frac_latent_{k}"] = float(latent.get(k, 0)) / n_cells if n_cells else np.nan
    return row


def column_descriptions(types: Sequence[str], latent_clusters: int | None) -> dict[str, str]:
    """Column -> description of the patient table, in the table's column order."""
    docs = {
        "patient": "patient id (sample sheet)",
        "condition": "condition from the sample sheet ('unknown' or empty: unlabelled, scored by predict)",
        "n_slides": "number of the patient's slides",
        "n_cells": "segmented cells over all the patient's slides",
        "n_leukocytes": "cells not predicted CTC",
    }
    for t in types:
        docs[f"count_{t}"] = f"cells predicted {t}"
    for t in types:
        if t != CTC:
            docs[f"frac_{t}"] = f"fraction of the patient's leukocytes predicted {t}"
    docs.update({
        "ctc_count": "cells predicted CTC (p_ctc_CTC >= 0.5, the ctc classifier's decision)",
        "ctc_per_1000": "predicted CTCs per 1000 leukocytes",
        "cell_clusters": f"clusters of >= {MIN_CLUSTER_SIZE} touching (or near) cells (extract's cluster_id)",
        "cell_clusters_per_1000": "cell clusters per 1000 cells",
        "ctc_leukocyte_clusters": "cell clusters holding at least one predicted CTC and one leukocyte",
        "ctc_in_clusters_fraction": "fraction of predicted CTCs that sit in a CTC-leukocyte cluster",
    })
    for feature, meaning in MORPHOLOGY_FEATURES.items():
        for t in types:
            docs[f"{feature}__{t}"] = f"median {meaning}, over cells predicted {t} (NaN: none)"
    for k in range(latent_clusters or 0):
        docs[f"frac_latent_{k}"] = f"fraction of the patient's cells in latent cluster {k} (embedding.parquet)"
    return docs


def write_patient_table(table: pd.DataFrame, descriptions: Mapping[str, str], parquet_path, tsv_path) -> None:
    """Write the table (descriptions in each field's metadata) and the column -> description TSV."""
    undocumented = [c for c in table.columns if c not in descriptions]
    if undocumented:
        raise ValueError(f"patient table columns without a description: {undocumented}")
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    fields = [f.with_metadata({"description": descriptions[f.name]}) for f in arrow.schema]
    arrow = arrow.cast(pa.schema(fields, metadata=arrow.schema.metadata))
    with atomic_output(parquet_path) as tmp:
        pq.write_table(arrow, tmp)
    with atomic_output(tsv_path) as tmp:
        pd.DataFrame({"column": list(table.columns), "description": [descriptions[c] for c in table.columns]}
                     ).to_csv(tmp, sep="\t", index=False)
