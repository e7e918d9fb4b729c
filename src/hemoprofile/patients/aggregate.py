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

Single-cell collections (sample-sheet rows with ``source: collection``, :mod:`hemoprofile.ingest.collection`)
aggregate the same way: their cell types are the classes of the collection classifier (e.g. the 8 PBC
classes), their cells.parquet has no morphology or cluster columns (those columns are NaN / 0 for them),
and fractions are of all classified cells. A table whose samples carry ``source`` has a ``modality``
column: ``slide`` for slides, the row's ``modality`` (e.g. ``smear``) for collections; a patient's
features come from its own modality, and one patient may not mix modalities.

Cells are pooled over a patient's slides before any median or fraction, so a patient with two slides
weighs each cell once. A slide with no cells contributes nothing but is counted in ``n_slides`` and
listed in the returned notes (the report shows them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from hemoprofile.io import atomic_output
from hemoprofile.io.tables import read_table
from hemoprofile.patients.interaction_features import INTERACTION_COLUMNS
from hemoprofile.vocabulary import CTC, cell_type_columns, cell_types_categorical

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


def _parquet_info(path: str) -> tuple[list[str], int, pa.Schema]:
    """A parquet file's column names, row count and schema from its footer (no data read)."""
    try:
        meta = pq.read_metadata(path)
    except Exception as err:  # pyarrow raises several types for a missing or broken file
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err
    schema = meta.schema.to_arrow_schema()
    return list(schema.names), int(meta.num_rows), schema


def _read_types(path: str, names: Sequence[str], with_ids: bool = True, with_ctc: bool = True
                ) -> tuple[pd.DataFrame, pd.Categorical, str]:
    """A predictions table's ``cell_id`` and its cells' types (categorical), reading only the columns
    :func:`hemoprofile.vocabulary.cell_types` needs, strings dictionary-encoded (a byte per cell).
    ``with_ctc`` False: the immune type only (``pred_ctc`` not read; ``leukocyte`` when the table has
    no immune task), for slides whose CTCs come from candidates or a review instead."""
    type_columns = cell_type_columns(names)
    if not type_columns:
        cell_types_categorical(pd.DataFrame(columns=list(names)))  # raises the error naming the columns
    if not with_ctc:
        type_columns = [c for c in type_columns if c != "pred_ctc"]
    columns = (["cell_id"] if with_ids and "cell_id" in names else []) + type_columns
    predictions = pq.read_table(path, columns=columns, read_dictionary=type_columns).to_pandas()
    if not type_columns:  # a ctc-only table: every cell a leukocyte until candidates or a review say otherwise
        n = len(predictions) if columns else pq.read_metadata(path).num_rows
        return predictions, pd.Categorical.from_codes(np.zeros(n, np.int64), ["leukocyte"]), "ctc"
    types, task = cell_types_categorical(predictions)
    return predictions, types, task


def _counted_ctc(slide: str, files: Mapping[str, str], cell_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Which of a slide's cells count as CTC when it has ``candidates`` (candidates.parquet): the cells a
    reviewer marked CTC where the slide has a ``review`` CSV, else every candidate. Returns the mask and
    the review's counts (:func:`hemoprofile.io.ctc_review.review_counts`; empty without a review)."""
    from hemoprofile.io.ctc_review import read_candidates, read_review, review_counts

    candidates = read_candidates(files["candidates"], ["cell_id"])["cell_id"].to_numpy(np.int64)
    if not files.get("review"):
        return np.isin(cell_ids, candidates), {}
    review = read_review(files["review"], slide, cell_ids)
    reviewed_ctc = review.loc[review["decision"] == "CTC", "cell_id"].to_numpy(np.int64)
    return np.isin(cell_ids, reviewed_ctc), review_counts(review, candidates)


def _slide_cells(slide: str, files: Mapping[str, str], morphology: Mapping[str, np.dtype]
                 ) -> tuple[pd.DataFrame, dict]:
    """One slide's cells with their predicted type (categorical), latent cluster and cell-cluster id:
    only the columns the patient row needs; and the counts of its review (empty without one).

    With ``files["candidates"]`` the CTCs are the candidates, or the reviewed CTCs where
    ``files["review"]`` is given (:func:`_counted_ctc`); without, the ctc classifier's ``pred_ctc``."""
    cells = read_table(files["cells"], ["cell_id", "cluster_id", *MORPHOLOGY_FEATURES])
    if "cluster_id" not in cells:  # a collection: one crop per cell, no touching cells
        cells["cluster_id"] = np.full(len(cells), -1, np.int64)
    names, n_predictions, _ = _parquet_info(files["predictions"])
    review: dict = {}
    if n_predictions:
        from_candidates = bool(files.get("candidates"))
        predictions, types, _ = _read_types(files["predictions"], names, with_ctc=not from_candidates)
        if from_candidates:
            is_ctc, review = _counted_ctc(slide, files, cells["cell_id"].to_numpy(np.int64))
            names_ = list(types.categories) + ([] if CTC in types.categories else [CTC])
            codes = np.asarray(types.codes, np.int64).copy()
            codes[is_ctc] = names_.index(CTC)
            types = pd.Categorical.from_codes(codes, names_)
    else:
        predictions, types = read_table(files["predictions"], ["cell_id"]), pd.Categorical([])
    if len(cells) != len(predictions) or not np.array_equal(cells["cell_id"], predictions["cell_id"]):
        raise ValueError(
            f"slide {slide}: {files['predictions']} has {len(predictions)} rows that do not match the "
            f"{len(cells)} cells of {files['cells']} (rerun classify for this slide)"
        )
    del predictions
    for feature, dtype in morphology.items():  # the dtype the cohort's pooled column has (float32 if all are)
        cells[feature] = cells[feature].astype(dtype) if feature in cells else np.full(len(cells), np.nan, dtype)
    cells["cell_type"] = types
    embedding = read_table(files.get("embedding"), ["cell_id", "cluster"])
    if embedding is not None:
        if len(embedding) != len(cells) or not np.array_equal(embedding["cell_id"], cells["cell_id"]):
            raise ValueError(f"slide {slide}: {files['embedding']} rows do not match {files['cells']}")
        cells["latent_cluster"] = embedding["cluster"].to_numpy()
    return cells.drop(columns="cell_id"), review


def _cluster_counts(cells: pd.DataFrame) -> dict[str, float]:
    """Cell clusters (>= MIN_CLUSTER_SIZE cells) and CTC-leukocyte clusters among one patient's cells."""
    clustered = (cells["cluster_id"] >= 0).to_numpy()
    n_clusters = n_ctc_clusters = n_ctc_in_clusters = 0
    if clustered.any():
        members = pd.DataFrame({"slide": cells["slide"].to_numpy()[clustered],
                                "cluster_id": cells["cluster_id"].to_numpy()[clustered],
                                "ctc": (cells["cell_type"] == CTC).to_numpy()[clustered].astype(np.int64)})
        groups = members.groupby(["slide", "cluster_id"], observed=True, sort=False)["ctc"]
        sizes, n_ctc = groups.size().to_numpy(), groups.sum().to_numpy()
        big = sizes >= MIN_CLUSTER_SIZE
        n_clusters = int(big.sum())
        mixed = big & (n_ctc > 0) & (n_ctc < sizes)
        n_ctc_clusters = int(mixed.sum())
        n_ctc_in_clusters = int(n_ctc[mixed].sum())
    return {"cell_clusters": n_clusters, "ctc_leukocyte_clusters": n_ctc_clusters,
            "ctc_in_mixed_clusters": n_ctc_in_clusters}


class _Cohort:
    """What the first, light pass over every slide finds (footers and the cell-type columns only): the
    notes, the cell types and latent clusters the table has columns for, and the dtype of each
    morphology feature once the cohort's cells are pooled."""

    def __init__(self, samples: pd.DataFrame, slide_files: Mapping[str, Mapping[str, str]],
                 modality: Mapping[str, str], *, find_types: bool, find_latent: bool) -> None:
        self.notes: list[str] = []
        self.collection_types: list[str] = []
        self.observed_types: set[str] = set()
        self.latent_max: int | None = None
        tasks: dict[str, set] = {}
        feature_dtypes: dict[str, list] = {}
        lacking: set[str] = set()
        for slide in samples["slide"]:
            files = slide_files[slide]
            kind = modality.get(str(slide), "slide")
            names, n_cells, schema = _parquet_info(files["cells"])
            for f in MORPHOLOGY_FEATURES:
                if f in names:
                    feature_dtypes.setdefault(f, []).append(schema.field(f).type.to_pandas_dtype())
                else:
                    lacking.add(f)
            pred_names, n_predictions, _ = _parquet_info(files["predictions"])
            if n_predictions:
                if find_types:
                    _, types, task = _read_types(files["predictions"], pred_names, with_ids=False)
                    seen = np.bincount(np.asarray(types.codes), minlength=len(types.categories)) > 0
                    self.observed_types |= {str(t) for t in types.categories[seen]}
                else:
                    type_columns = cell_type_columns(pred_names)
                    if not type_columns:
                        cell_types_categorical(pd.DataFrame(columns=pred_names))  # raises naming the columns
                    task = type_columns[0][len("pred_"):] if type_columns[0] != "pred_ctc" else "ctc"
            else:
                task = ""
            if n_cells == 0:
                self.notes.append(f"slide {slide}: no cells (it counts in n_slides and adds nothing else)")
            else:
                tasks.setdefault(kind, set()).add(task)
            if kind != "slide":
                self.collection_types += [c for c in _prediction_classes(files["predictions"])
                                          if c not in self.collection_types]
            if find_latent and files.get("embedding") and n_cells:
                clusters = pq.read_table(files["embedding"], columns=["cluster"]).column("cluster")
                top = pa.compute.max(clusters).as_py() if len(clusters) else None
                if top is not None:
                    self.latent_max = max(int(top), self.latent_max if self.latent_max is not None else int(top))
        for kind, found in sorted(tasks.items()):
            if len(found) > 1:
                raise ValueError(f"{kind} rows were classified with different cell-type tasks {sorted(found)}; "
                                 "rerun classify")
            where = "" if set(tasks) == {"slide"} else f" for {kind} rows"
            self.notes.append(f"cell types{where} come from the '{found.pop()}' classifier"
                              + (" (CTC from 'ctc' where present)" if kind == "slide" else ""))
        # the dtype of the feature pooled over the cohort as pandas' concat gives it: the common type of
        # the slides that have it, NaN-capable where some slide lacks it (float32 stays float32)
        self.morphology = {}
        for f, dtypes in feature_dtypes.items():
            dtype = np.result_type(*dtypes)
            self.morphology[f] = dtype if f not in lacking or dtype.kind in "fc" else np.dtype(np.float64)


def aggregate_patients(
    samples: pd.DataFrame,
    slide_files: Mapping[str, Mapping[str, str]],
    *,
    cell_type_names: Sequence[str] | None = None,
    latent_clusters: int | None = None,
    progress: Callable[[str], object] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Aggregate slides into one row per patient.

    Memory is bounded by the largest patient, not the cohort: a light first pass reads only the
    files' footers (and, when ``cell_type_names`` or ``latent_clusters`` is not given, the cell-type and
    latent-cluster columns, a few bytes per cell, one slide at a time); then each patient's slides are
    read, only the columns the row needs, cell types as a categorical, and dropped once its row is made.

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
    modality = sample_modalities(samples)
    cohort = _Cohort(samples, slide_files, modality, find_types=cell_type_names is None,
                     find_latent=latent_clusters is None)
    has_slides = any(modality.get(str(s), "slide") == "slide" for s in samples["slide"])
    if cell_type_names is not None:
        types = list(cell_type_names) if has_slides else []
        types += [t for t in cohort.collection_types if t not in types]
    else:
        types = sorted(t for t in cohort.observed_types if t != CTC) + [CTC]
    morphology = list(cohort.morphology)
    if latent_clusters is None and cohort.latent_max is not None:
        latent_clusters = cohort.latent_max + 1

    position = {slide: i for i, slide in enumerate(samples["slide"])}
    rows = []
    for patient, sheet in samples.groupby(samples["patient"].astype(str), sort=True):
        conditions = sorted({str(c) for c in sheet["condition"]})
        if len(conditions) > 1:
            raise ValueError(f"patient {patient}: slides disagree on the condition ({', '.join(conditions)})")
        kinds = sorted({modality.get(str(s), "slide") for s in sheet["slide"]})
        if len(kinds) > 1:
            raise ValueError(f"patient {patient}: rows of different modalities ({', '.join(kinds)}); a patient's "
                             "features come from one modality, so give each modality its own patient id")
        cells, reviews = _patient_cells(sheet["slide"], slide_files, cohort.morphology, position, len(samples),
                                        progress)
        row = patient_row(cells, types, latent_clusters, morphology)
        del cells
        ident = {"patient": patient, "condition": conditions[0]}
        if modality:
            ident["modality"] = kinds[0]
        with_candidates = [s for s in sheet["slide"] if slide_files[s].get("candidates")]
        if with_candidates:  # candidates (and reviews) decide what counts as a CTC
            row["ctc_candidates"] = sum(_parquet_info(slide_files[s]["candidates"])[1] for s in with_candidates)
            row["ctc_reviewed_slides"] = len(reviews)
        for slide, counts in reviews.items():
            cohort.notes.append(f"slide {slide}: CTCs from review {slide_files[slide]['review']}: "
                                f"{counts['reviewed_ctc']} CTC, {counts['reviewed_not_ctc']} not CTC, "
                                f"{counts['unsure']} unsure (not counted), {counts['unreviewed']} candidate(s) "
                                f"without a decision (not counted)")
        rows.append({**ident, "n_slides": len(sheet), **row})
    table = pd.DataFrame(rows)
    order = list(column_descriptions(types, latent_clusters, morphology))
    return table[[c for c in order if c in table]], cohort.notes


def _patient_cells(slides: Sequence[str], slide_files: Mapping[str, Mapping[str, str]],
                   morphology: Mapping[str, np.dtype], position: Mapping[str, int], n_slides: int,
                   progress: Callable[[str], object] | None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One patient's cells pooled over its slides (``slide`` and ``cell_type`` categorical), and the
    review counts of its reviewed slides."""
    parts, reviews = [], {}
    for slide in slides:
        cells, review = _slide_cells(str(slide), slide_files[slide], morphology)
        if review:
            reviews[str(slide)] = review
        cells["slide"] = pd.Categorical.from_codes(np.zeros(len(cells), np.int8), [str(slide)])
        parts.append(cells)
        if progress:
            progress(f"read slide {slide} ({position[slide] + 1}/{n_slides}, {len(cells)} cells)")
    categories = sorted({str(t) for p in parts for t in p["cell_type"].cat.categories})
    for p in parts:  # one category list, so the pooled column stays categorical
        p["cell_type"] = p["cell_type"].cat.set_categories(categories)
    slide_names = [str(s) for s in slides]
    for p in parts:
        p["slide"] = p["slide"].cat.set_categories(slide_names)
    return pd.concat(parts, ignore_index=True), reviews


def sample_modalities(samples: pd.DataFrame) -> dict[str, str]:
    """Slide -> modality (``slide``, or a collection row's ``modality``, default ``smear``); empty when the
    sheet has no ``source`` column (a slides-only table keeps its columns)."""
    if "source" not in samples:
        return {}
    out = {}
    for i, slide in enumerate(samples["slide"].astype(str)):
        source = str(samples["source"].iloc[i])
        if source == "collection":
            value = samples["modality"].iloc[i] if "modality" in samples else None
            out[slide] = str(value) if isinstance(value, str) and value else "smear"
        else:
            out[slide] = "slide"
    return out


def _prediction_classes(path: str) -> list[str]:
    """The classes of a collection's classifier, from its predictions.parquet metadata (the model's)."""
    meta = pq.read_schema(path).metadata or {}
    models = json.loads(meta.get(b"hemoprofile", b"{}")).get("models", {})
    return [str(c) for m in models.values() if m.get("classes") for c in m["classes"]]


def patient_row(cells: pd.DataFrame, types: Sequence[str], latent_clusters: int | None,
                 morphology: Sequence[str] = tuple(MORPHOLOGY_FEATURES)) -> dict:
    """The patient-table row (without identity columns) of one patient's pooled cells.

    Parameters
    ----------
    cells : one row per cell: ``cell_type`` (strings or a categorical), ``cluster_id`` (-1: in no
        cluster), ``slide`` (cluster ids are per slide), optionally ``latent_cluster`` and the
        ``morphology`` features.
    types : the cell types that get count/frac/morphology columns.
    latent_clusters : number of ``frac_latent_<k>`` columns (None or 0: none).
    morphology : the :data:`MORPHOLOGY_FEATURES` summarised by type.

    Example
    -------
    >>> cells = pd.DataFrame({"cell_type": ["T", "T", "CTC"], "cluster_id": [0, 0, -1], "slide": "S"})
    >>> row = patient_row(cells, ["T", "CTC"], None, morphology=())
    >>> row["n_leukocytes"], row["frac_T"], row["ctc_per_1000"], row["cell_clusters"]
    (2, 1.0, 500.0, 1)
    """
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
    present = [f for f in morphology if f in cells]
    medians = cells.groupby("cell_type", observed=True)[present].median() if present else None
    for feature in morphology:
        by_type = medians[feature] if feature in present else pd.Series(dtype=float)
        for t in types:
            row[f"{feature}__{t}"] = float(by_type.get(t, np.nan))
    if latent_clusters:
        latent = cells["latent_cluster"].value_counts() if "latent_cluster" in cells else pd.Series(dtype=float)
        embedded = bool(latent.sum())  # a collection patient in a mixed cohort has no latent space: NaN
        for k in range(latent_clusters):
            row[f"frac_latent_{k}"] = float(latent.get(k, 0)) / n_cells if n_cells and embedded else np.nan
    return row


def column_descriptions(types: Sequence[str], latent_clusters: int | None,
                        morphology: Sequence[str] | None = None) -> dict[str, str]:
    """Column -> description of the patient table, in the table's column order (``morphology``: the
    :data:`MORPHOLOGY_FEATURES` the table has, default all)."""
    docs = {
        "patient": "patient id (sample sheet)",
        "condition": "condition from the sample sheet ('unknown' or empty: unlabelled, scored by predict)",
        "modality": "where the patient's cells come from: 'slide' (segmented from slide images) or a "
                    "single-cell collection's modality (e.g. 'smear': stained-smear crops)",
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
        "ctc_count": "cells counted as CTC: on a slide with a review (reviews/<slide>.csv) the cells the reviewer "
                     "marked CTC; else the CTC candidates (p_ctc_CTC >= the candidate threshold, "
                     "candidates.parquet) where the workflow gives them, else pred_ctc (p_ctc_CTC >= 0.5)",
        "ctc_per_1000": "CTCs (ctc_count) per 1000 leukocytes",
        "ctc_candidates": "CTC candidates over the patient's slides (candidates.parquet rows: what a reviewer looks at)",
        "ctc_reviewed_slides": "the patient's slides whose CTC count comes from a review CSV",
        "cell_clusters": f"clusters of >= {MIN_CLUSTER_SIZE} touching (or near) cells (extract's cluster_id)",
        "cell_clusters_per_1000": "cell clusters per 1000 cells",
        "ctc_leukocyte_clusters": "cell clusters holding at least one predicted CTC and one leukocyte",
        "ctc_in_clusters_fraction": "fraction of predicted CTCs that sit in a CTC-leukocyte cluster",
    })
    for feature, meaning in MORPHOLOGY_FEATURES.items():
        if morphology is not None and feature not in morphology:
            continue
        for t in types:
            docs[f"{feature}__{t}"] = f"median {meaning}, over cells predicted {t} (NaN: none)"
    for k in range(latent_clusters or 0):
        docs[f"frac_latent_{k}"] = f"fraction of the patient's cells in latent cluster {k} (embedding.parquet)"
    return docs


def table_descriptions(table: pd.DataFrame) -> dict[str, str]:
    """:func:`column_descriptions` for the columns an aggregated table has (its cell types from the
    ``count_`` columns, its latent clusters and morphology features from theirs), and the interaction
    features' (:data:`hemoprofile.patients.interaction_features.INTERACTION_COLUMNS`) where present."""
    types = [c[len("count_"):] for c in table.columns if c.startswith("count_")]
    latent = sum(c.startswith("frac_latent_") for c in table.columns)
    morphology = [f for f in MORPHOLOGY_FEATURES if any(c.startswith(f"{f}__") for c in table.columns)]
    docs = column_descriptions(types, latent, morphology)
    docs.update({c: d for c, d in INTERACTION_COLUMNS.items() if c in table.columns})
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
