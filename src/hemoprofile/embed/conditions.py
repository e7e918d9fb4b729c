"""Latent clusters by condition: per latent cluster, how many cells it holds, what share of it comes from
each condition, whether that share differs between conditions more than chance allows (cells and
patients), and its most representative cells (medoids) for a gallery.

The cohort table (:func:`clusters_by_condition`, the workflow's ``clusters_by_condition`` rule:
``results/cohort/embedding/clusters_by_condition.parquet``) has one row per latent cluster (0..k-1, empty
clusters included) and the columns (``<c>``: each known condition, sorted):

- ``cluster``; ``n_cells`` (all its cells, unknown-condition patients included); ``fraction`` (of all cells);
  ``n_unknown`` (its cells from patients whose condition is unknown: counted, not tested).
- ``n_<c>``: its cells from condition ``<c>``.
- ``share_<c>``: share of the cluster from ``<c>`` *normalised by each condition's cell count*:
  ``(n_c / N_c) / sum_c' (n_c' / N_c')`` with ``N_c`` all cells of condition ``<c>``, i.e. the share it
  would have if every condition had contributed equally many cells (sums to 1 over conditions).
- ``log2_enrichment_<c>``: ``log2`` of the cluster's frequency among ``<c>``'s cells over its frequency
  among all known-condition cells, ``((n_c + 0.5) / (N_c + 1)) / ((n + 0.5) / (N + 1))`` (0.5: a
  pseudo-count, so a condition absent from the cluster stays finite); > 0 = enriched in ``<c>``.
- ``test`` (``fisher``: two known conditions, Fisher's exact test of the 2x2 table cluster vs rest x
  condition; ``chi2``: more, the chi-square test of the 2 x C table; empty with fewer than two),
  ``p_value``, ``p_adjusted`` (Benjamini-Hochberg over the clusters).
- ``patients_<c>``: patients of ``<c>`` that *carry* the cluster (at least ``carrier_fraction`` of their
  cells in it); ``patients_unknown`` the same for unknown-condition patients.
- ``top_patient``, ``top_patient_share``: the patient that contributes most of the cluster's cells and
  that share (1.0 = a single patient's cluster).
- ``p_patients``, ``p_patients_adjusted``: the same question asked of patients, so that one patient
  cannot make a cluster look enriched: each known-condition patient's fraction of cells in the cluster,
  compared between conditions (Mann-Whitney U for two conditions, Kruskal-Wallis for more), BH-adjusted.
- ``enriched_in``: the condition with the largest log2 enrichment when ``p_adjusted < alpha`` (else
  empty); ``patient_supported``: whether ``p_patients_adjusted < alpha`` as well.
- ``medoid_slides``, ``medoid_cell_ids``, ``medoid_rows``: lists, the cells nearest the cluster's centre
  (mean latent vector of all its cells, Euclidean) in order, with their row in the slide's
  patches.zarr / cells.parquet.

The parquet schema metadata ``hemoprofile`` holds the conditions, the settings, the model id and
``condition_on``. With a conditional VAE (``embed.condition_on: condition``) the clusters come from that
model, whose decoder is told each cell's condition: a cluster still enriched there differs in what cells
are present, not by a shift the decoder explains from the condition alone (a more conservative view).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from hemoprofile.embed.metrics import json_default
from hemoprofile.io import atomic_output

log = logging.getLogger(__name__)

#: Sample-sheet conditions that mean "not known" (counted, never tested), compared case-insensitively.
UNKNOWN_CONDITIONS = ("", "unknown", "nan", "none")
PSEUDO_COUNT = 0.5


def is_known(condition) -> bool:
    """Whether a sample sheet's condition is a known one.

    Example
    -------
    >>> is_known("control"), is_known("unknown"), is_known(None), is_known(float("nan"))
    (True, False, False, False)
    """
    if condition is None or (isinstance(condition, float) and np.isnan(condition)):
        return False
    return str(condition).strip().lower() not in UNKNOWN_CONDITIONS


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (:func:`scipy.stats.false_discovery_control`); NaN stays NaN
    and does not count as a test.

    Example
    -------
    >>> benjamini_hochberg([0.01, 0.04, float("nan"), 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(np.clip(p[ok], 0, 1), method="bh")
    return out


def cluster_test(in_cluster: np.ndarray, totals: np.ndarray) -> tuple[str, float]:
    """Test whether a cluster's cells split over the conditions like the rest's: (test name, p).

    ``in_cluster`` and ``totals`` are cells per known condition. Fisher's exact test (two-sided) of the
    2x2 table for two conditions, the chi-square test of the 2 x C table for more; conditions without
    cells are left out; p = 1 when the cluster or the rest is empty; ``("", nan)`` with fewer than two.
    """
    a = np.asarray(in_cluster, np.int64)
    t = np.asarray(totals, np.int64)
    keep = t > 0
    a, t = a[keep], t[keep]
    if len(t) < 2:
        return "", float("nan")
    table = np.stack([a, t - a])
    name = "fisher" if len(t) == 2 else "chi2"
    if table[0].sum() == 0 or table[1].sum() == 0:
        return name, 1.0
    if name == "fisher":
        return name, float(stats.fisher_exact(table)[1])
    return name, float(stats.chi2_contingency(table, correction=False)[1])


def patient_test(fractions: np.ndarray, conditions: np.ndarray) -> float:
    """p of the per-patient cluster fractions differing between conditions: Mann-Whitney U (two-sided) for
    two conditions, Kruskal-Wallis for more; NaN with fewer than two conditions; 1 when all are equal."""
    groups = [np.asarray(fractions)[np.asarray(conditions) == c] for c in np.unique(conditions)]
    groups = [g for g in groups if len(g)]
    if len(groups) < 2:
        return float("nan")
    if np.ptp(np.concatenate(groups)) == 0:
        return 1.0
    if len(groups) == 2:
        return float(stats.mannwhitneyu(groups[0], groups[1], alternative="two-sided").pvalue)
    return float(stats.kruskal(*groups).pvalue)


def condition_table(counts: np.ndarray, patients: Sequence, conditions: Sequence, *,
                    carrier_fraction: float = 0.01, alpha: float = 0.05) -> pd.DataFrame:
    """The per-cluster table (columns: see the module docstring, without the medoids) of cell counts.

    Parameters
    ----------
    counts : (units, k) cells of each unit (a slide, or any group of cells of one patient) per cluster.
    patients, conditions : each unit's patient and sample-sheet condition.
    carrier_fraction : a patient carries a cluster when at least this share of its cells is in it.
    alpha : level of the ``enriched_in`` and ``patient_supported`` flags (on BH-adjusted p).
    """
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 2 or counts.shape[0] != len(patients) or counts.shape[0] != len(conditions):
        raise ValueError(f"counts {counts.shape} do not match {len(patients)} patients / {len(conditions)} conditions")
    k = counts.shape[1]
    units = pd.DataFrame({"patient": [str(p) for p in patients],
                          "condition": [str(c).strip() if is_known(c) else "" for c in conditions]})
    # one row per patient (a patient's slides pooled); a patient listed under two conditions is two rows
    per = pd.DataFrame(counts).groupby([units["patient"], units["condition"]], sort=True).sum()
    p_counts = per.to_numpy(np.int64)
    p_names = per.index.get_level_values(0).to_numpy(object)
    p_cond = per.index.get_level_values(1).to_numpy(object)
    known = sorted(c for c in set(p_cond) if c)
    total = p_counts.sum(0)
    out = pd.DataFrame({"cluster": np.arange(k, dtype=np.int32), "n_cells": total.astype(np.int64),
                        "fraction": total / max(total.sum(), 1),
                        "n_unknown": p_counts[p_cond == ""].sum(0).astype(np.int64)})
    by_cond = np.stack([p_counts[p_cond == c].sum(0) for c in known]) if known else np.zeros((0, k), np.int64)
    n_c = by_cond.sum(1)                         # cells per condition
    freq = np.divide(by_cond, n_c[:, None], out=np.zeros(by_cond.shape), where=n_c[:, None] > 0)
    norm = freq.sum(0)
    n_known = by_cond.sum(0)
    base = (n_known + PSEUDO_COUNT) / (n_c.sum() + 1.0)
    patient_size = p_counts.sum(1)
    p_frac = np.divide(p_counts, patient_size[:, None], out=np.zeros(p_counts.shape), where=patient_size[:, None] > 0)
    carrier = (p_frac >= float(carrier_fraction)) & (patient_size[:, None] > 0)
    for i, c in enumerate(known):
        out[f"n_{c}"] = by_cond[i].astype(np.int64)
        out[f"share_{c}"] = np.divide(freq[i], norm, out=np.full(k, np.nan), where=norm > 0)
        out[f"log2_enrichment_{c}"] = np.log2(((by_cond[i] + PSEUDO_COUNT) / (n_c[i] + 1.0)) / base)
    tests = [cluster_test(by_cond[:, j], n_c) for j in range(k)]
    out["test"] = [t for t, _ in tests]
    out["p_value"] = np.array([p for _, p in tests], np.float64)
    out["p_adjusted"] = benjamini_hochberg(out["p_value"])
    for c in known:
        out[f"patients_{c}"] = carrier[p_cond == c].sum(0).astype(np.int64)
    out["patients_unknown"] = carrier[p_cond == ""].sum(0).astype(np.int64)
    top = p_counts.argmax(0) if len(p_counts) else np.zeros(k, np.int64)
    out["top_patient"] = [str(p_names[top[j]]) if total[j] else "" for j in range(k)]
    out["top_patient_share"] = np.divide(p_counts[top, np.arange(k)] if len(p_counts) else np.zeros(k), total,
                                         out=np.full(k, np.nan), where=total > 0)
    tested = (p_cond != "") & (patient_size > 0)
    out["p_patients"] = np.array([patient_test(p_frac[tested, j], p_cond[tested]) for j in range(k)], np.float64)
    out["p_patients_adjusted"] = benjamini_hochberg(out["p_patients"])
    enr = np.stack([out[f"log2_enrichment_{c}"].to_numpy() for c in known]) if known else np.zeros((0, k))
    significant = out["p_adjusted"].to_numpy() < float(alpha)
    out["enriched_in"] = [known[int(np.argmax(enr[:, j]))] if significant[j] and known else "" for j in range(k)]
    out["patient_supported"] = significant & (out["p_patients_adjusted"].to_numpy() < float(alpha))
    return out


def cell_condition_table(clusters, conditions, patients, k: int | None = None, **kwargs) -> pd.DataFrame:
    """:func:`condition_table` of per-cell cluster ids, conditions and patients (``k``: number of clusters,
    default the largest id + 1).

    Example
    -------
    >>> t = cell_condition_table([0, 0, 0, 1], ["a", "a", "b", "b"], ["p1", "p1", "p2", "p2"])
    >>> t[["cluster", "n_cells", "n_a", "n_b"]].values.tolist()
    [[0, 3, 2, 1], [1, 1, 0, 1]]
    """
    clusters = np.asarray(clusters, np.int64)
    k = int(k if k is not None else (clusters.max() + 1 if len(clusters) else 0))
    keys = pd.DataFrame({"patient": [str(p) for p in patients], "condition": [str(c) for c in conditions]})
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
    counts = np.zeros((len(uniques), k), np.int64)
    np.add.at(counts, (codes, clusters), 1)
    return condition_table(counts, [u[0] for u in uniques], [u[1] for u in uniques], **kwargs)


def nearest_to_centres(z: np.ndarray, clusters: np.ndarray, centres: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """Indices of the ``n`` rows of ``z`` nearest (Euclidean) their own cluster's centre, nearest first.

    Example
    -------
    >>> z = np.array([[0.0], [1.0], [5.0], [9.0], [10.0]])
    >>> {c: v.tolist() for c, v in nearest_to_centres(z, np.array([0, 0, 0, 1, 1]), np.array([[2.0], [9.6]]), 2).items()}
    {0: [1, 0], 1: [4, 3]}
    """
    z = np.asarray(z, np.float64)
    clusters = np.asarray(clusters)
    out = {}
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        d = ((z[rows] - centres[int(c)]) ** 2).sum(1)
        out[int(c)] = rows[np.argsort(d, kind="stable")[: int(n)]]
    return out


def _read_embedding(path, columns=None) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path, columns=columns)
    meta = (table.schema.metadata or {}).get(b"hemoprofile")
    return table.to_pandas(), (json.loads(meta) if meta else {})


def clusters_by_condition(embedding_paths: Sequence[str | os.PathLike], items: Sequence, out_path: str | os.PathLike,
                          *, settings: Mapping | None = None,
                          progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The cohort table of latent clusters by condition (module docstring) from every slide's
    embedding.parquet, written to ``out_path`` (parquet, atomically) and returned.

    Two passes over the embeddings, one slide in memory at a time: cluster counts and latent sums per
    slide, then the cells nearest each cluster's centre.

    Parameters
    ----------
    embedding_paths : embedding.parquet per slide, in the order of ``items``.
    items : objects with ``slide``, ``patient`` and ``condition`` (:class:`hemoprofile.embed.sample.EmbedSlide`).
    settings : ``embed.conditions``: ``carrier_fraction``, ``medoids``, ``alpha``.
    """
    say = progress or (lambda m: log.info(m))
    cfg = {"carrier_fraction": 0.01, "medoids": 8, "alpha": 0.05, **dict(settings or {})}
    if len(embedding_paths) != len(items):
        raise ValueError(f"{len(embedding_paths)} embedding tables for {len(items)} slides")
    metas, per_slide, sums = [], [], None
    k = 0
    for path in embedding_paths:
        frame, meta = _read_embedding(path)
        metas.append(meta)
        zcols = [c for c in frame.columns if c.startswith("z_")]
        cl = frame["cluster"].to_numpy(np.int64)
        k = max(k, int(meta.get("k", 0)), int(cl.max()) + 1 if len(cl) else 0)
        if sums is None:
            sums = np.zeros((k, len(zcols)))
        if sums.shape[0] < k:
            sums = np.vstack([sums, np.zeros((k - sums.shape[0], sums.shape[1]))])
        np.add.at(sums, cl, frame[zcols].to_numpy(np.float64))
        per_slide.append(np.bincount(cl, minlength=k))
    counts = np.zeros((len(items), k), np.int64)
    for i, c in enumerate(per_slide):
        counts[i, : len(c)] = c
    table = condition_table(counts, [i.patient or i.slide for i in items], [i.condition for i in items],
                            carrier_fraction=float(cfg["carrier_fraction"]), alpha=float(cfg["alpha"]))
    total = counts.sum(0)
    centres = np.divide(sums if sums is not None else np.zeros((k, 1)), np.maximum(total, 1)[:, None])
    n_med = int(cfg["medoids"])
    best: dict[int, list[tuple[float, str, int, int]]] = {c: [] for c in range(k)}
    for item, path in zip(items, embedding_paths):
        frame, _ = _read_embedding(path)
        if not len(frame):
            continue
        zcols = [c for c in frame.columns if c.startswith("z_")]
        z, cl = frame[zcols].to_numpy(np.float64), frame["cluster"].to_numpy(np.int64)
        near = nearest_to_centres(z, cl, centres, n_med)
        ids = frame["cell_id"].to_numpy(np.int64)
        for c, rows in near.items():
            d = ((z[rows] - centres[c]) ** 2).sum(1)
            best[c] = sorted(best[c] + [(float(dd), item.slide, int(ids[r]), int(r)) for dd, r in zip(d, rows)])[:n_med]
    table["medoid_slides"] = [[b[1] for b in best[c]] for c in range(k)]
    table["medoid_cell_ids"] = [[b[2] for b in best[c]] for c in range(k)]
    table["medoid_rows"] = [[b[3] for b in best[c]] for c in range(k)]
    known = sorted({str(i.condition).strip() for i in items if is_known(i.condition)})
    first = next((m for m in metas if m), {})
    meta = {"conditions": known, "n_cells": int(total.sum()), "n_slides": len(items),
            "n_patients": len({i.patient or i.slide for i in items}),
            "patients_per_condition": {c: len({i.patient or i.slide for i in items if str(i.condition).strip() == c})
                                       for c in known},
            "cells_per_condition": {c: int(table[f"n_{c}"].sum()) for c in known},
            "model_id": first.get("model_id"), "condition_on": first.get("condition_on", "none"),
            "clustering": first.get("clustering"), "k": k, **cfg}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           b"hemoprofile": json.dumps(meta, default=json_default).encode()})
    with atomic_output(out_path) as tmp:
        pq.write_table(arrow, tmp)
    flagged = table[table["enriched_in"] != ""]
    say(f"{k} latent clusters, {int(total.sum())} cells of {len(items)} slides; conditions {known}; "
        f"{len(flagged)} enriched (BH p < {cfg['alpha']}), {int(flagged['patient_supported'].sum())} also by patient")
    return table

