"""Metrics of the latent space and its latent clusters, and the JSON they are written to.

Silhouette, Davies-Bouldin and Calinski-Harabasz are computed on the latent vectors themselves (never on
the 2-D map, which would flatter or hide structure); adjusted Rand index, normalised mutual information
(arithmetic mean of the entropies), purity and clustering accuracy (the best one-to-one mapping of clusters
to labels, by the Hungarian assignment) of the latent clusters against labels where labels exist
(synthetic truth cell types matched by centroid to ``truth_labels.zarr``, or a collection's ``label``
column); and batch mixing: the silhouette of the latent vectors by batch (near 0 or below = batches mixed,
1 = each batch apart), the same within each cell type where labels exist, and the normalised entropy of
batches among each cell's k nearest neighbours (1 = as mixed as the cohort, 0 = neighbours all from the
cell's own batch).

The standard scores are scikit-learn's (:mod:`sklearn.metrics`), wrapped to give NaN where a score is
undefined (fewer than 2 groups, or as many groups as cells) instead of raising; purity and the kNN batch
entropy are the project's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import sklearn.metrics as skm
from scipy.optimize import linear_sum_assignment
from sklearn.metrics.cluster import contingency_matrix

from hemoprofile.embed.sample import EmbedSlide, cohort_labels
from hemoprofile.io import atomic_output


def _groups(values) -> np.ndarray:
    """Labels scikit-learn can encode: object arrays (strings, mixed) as strings, others as they are."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _codes(values) -> tuple[np.ndarray, int]:
    _, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if len(inv) else 0


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    if size <= 0 or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _defined(n_groups: int, n: int) -> bool:
    return 2 <= n_groups <= n - 1


def silhouette(z: np.ndarray, labels, sample_size: int = 5000, seed: int = 0) -> float:
    """Mean silhouette (:func:`sklearn.metrics.silhouette_score`, Euclidean) on at most ``sample_size``
    cells (drawn with ``random_state=seed``; the exact score is O(N^2)). Cells alone in their group score
    0. NaN when there are fewer than 2 or more than N-1 groups (in the sample).

    Example
    -------
    >>> round(silhouette(np.array([[0.0], [1.0], [10.0], [11.0]]), [0, 0, 1, 1]), 4)
    0.8997
    """
    z = np.asarray(z, np.float64)
    labels = _groups(labels)
    n = len(z)
    sample = int(sample_size) if 0 < int(sample_size) < n else None
    if not _defined(len(np.unique(labels)), min(n, sample or n)):
        return float("nan")
    try:
        return float(skm.silhouette_score(z, labels, sample_size=sample, random_state=int(seed)))
    except ValueError as err:  # the sample drew fewer than 2 groups (or only singletons)
        if "Number of labels" in str(err):
            return float("nan")
        raise


def davies_bouldin(z: np.ndarray, labels) -> float:
    """Davies-Bouldin index (:func:`sklearn.metrics.davies_bouldin_score`; lower = more compact, better
    separated groups); NaN for fewer than 2 or more than N-1 groups."""
    labels = _groups(labels)
    if not _defined(len(np.unique(labels)), len(labels)):
        return float("nan")
    return float(skm.davies_bouldin_score(np.asarray(z, np.float64), labels))


def calinski_harabasz(z: np.ndarray, labels) -> float:
    """Calinski-Harabasz index (:func:`sklearn.metrics.calinski_harabasz_score`; between- over
    within-group dispersion, higher = better); NaN for fewer than 2 or more than N-1 groups."""
    labels = _groups(labels)
    if not _defined(len(np.unique(labels)), len(labels)):
        return float("nan")
    return float(skm.calinski_harabasz_score(np.asarray(z, np.float64), labels))


def purity(truth, pred) -> float:
    """Fraction of cells whose latent cluster's majority label is their own label.

    Example
    -------
    >>> purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1])
    0.8
    """
    table = contingency_matrix(_groups(truth), _groups(pred))
    return float(table.max(0).sum() / max(table.sum(), 1))


def clustering_accuracy(truth, pred) -> float:
    """Clustering accuracy: the share of cells matched under the best one-to-one mapping of clusters to
    labels (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`, on the contingency table).

    Unlike purity, two clusters cannot both claim one label: with more clusters than labels the extra
    clusters' cells count as wrong, with fewer the extra labels' cells do. 1 = the clustering is the labelling
    up to renaming; NaN for no cells.

    Example
    -------
    >>> clustering_accuracy(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1])
    0.8
    >>> clustering_accuracy(["a", "a", "a", "b"], [0, 1, 2, 2])  # purity would be 1.0
    0.5
    """
    table = contingency_matrix(_groups(truth), _groups(pred))
    if table.sum() == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def knn_batch_entropy(z: np.ndarray, batches, k: int = 15, groups=None, sample_size: int = 5000, seed: int = 0,
                      block: int = 1024) -> float:
    """Batch mixing: the entropy of batch labels among each cell's ``k`` nearest neighbours (Euclidean,
    in ``z``), divided by the entropy of the batch proportions of the cells searched, averaged over cells.

    1 = neighbourhoods as mixed as the whole (sub)population, 0 = every neighbour from the cell's own
    batch. With ``groups`` (e.g. cell types), neighbours are searched within each group only and the
    groups' scores are averaged weighted by size: mixing of batches *within* a cell type, which a
    composition difference between batches cannot fake. NaN with fewer than 2 batches.
    """
    z = np.asarray(z, np.float64)
    idx = _subsample(len(z), int(sample_size), seed)
    z = z[idx]
    b_codes, nb = _codes(np.asarray(batches, dtype=object)[idx])
    if nb < 2:
        return float("nan")
    g = np.zeros(len(z), np.int64) if groups is None else _codes(np.asarray(groups, dtype=object)[idx])[0]
    total, weight = 0.0, 0
    for grp in np.unique(g):
        members = np.flatnonzero(g == grp)
        zz, bb = z[members], b_codes[members]
        props = np.bincount(bb, minlength=nb) / len(bb)
        h_ref = float(-(props[props > 0] * np.log(props[props > 0])).sum())
        kk = min(int(k), len(members) - 1)
        if h_ref <= 0 or kk < 1:
            continue
        sq = (zz * zz).sum(1)
        ent = np.zeros(len(members))
        for s in range(0, len(members), block):
            d = sq[s:s + block, None] - 2 * zz[s:s + block] @ zz.T + sq[None]
            rows = np.arange(d.shape[0])
            d[rows, rows + s] = np.inf  # a cell is not its own neighbour
            nn = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            counts = np.zeros((len(rows), nb))
            np.add.at(counts, (np.repeat(rows, kk), bb[nn].ravel()), 1.0)
            p = counts / kk
            with np.errstate(divide="ignore", invalid="ignore"):
                ent[s:s + block] = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
        total += float((ent / h_ref).sum())
        weight += len(members)
    return total / weight if weight else float("nan")


def latent_metrics(z: np.ndarray, clusters, labels=None, batches=None, sample_size: int = 5000, knn: int = 15,
                   seed: int = 0) -> dict:
    """All metrics of the latent space (see the module docstring) as a JSON-ready dict.

    Parameters
    ----------
    z : (N, d) latent vectors (not a 2-D projection).
    clusters : (N,) latent cluster ids.
    labels : (N,) reference labels (``None`` entries ignored for label metrics), or ``None``.
    batches : (N,) batch (or slide) of each cell, or ``None``.
    sample_size : cells used by the O(N^2) metrics (silhouettes, kNN), seeded.
    knn : neighbours for the batch entropy.

    Returns
    -------
    dict with ``n_cells``, ``n_clusters``, ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``, and when
    labels exist ``label``: {``n_labelled``, ``ari``, ``nmi``, ``purity``, ``accuracy`` (:func:`clustering_accuracy`),
    ``silhouette_by_label``}, and when
    there are two or more batches ``batch``: {``n_batches``, ``silhouette_by_batch``, ``knn_entropy``, ``cluster_nmi``, and
    with labels ``silhouette_by_batch_within_label`` and ``knn_entropy_within_label``}.
    """
    z = np.asarray(z, np.float64)
    clusters = np.asarray(clusters)
    out = {"n_cells": int(len(z)), "n_clusters": int(len(np.unique(clusters))),
           "silhouette": silhouette(z, clusters, sample_size, seed),
           "davies_bouldin": davies_bouldin(z, clusters),
           "calinski_harabasz": calinski_harabasz(z, clusters)}
    labelled = None
    if labels is not None:
        labels = np.asarray(labels, dtype=object)
        labelled = np.array([v is not None and v == v for v in labels])
        if labelled.sum() >= 2:
            t, c = labels[labelled].astype(str), clusters[labelled]
            out["label"] = {"n_labelled": int(labelled.sum()), "n_labels": int(len(np.unique(t))),
                            "ari": float(skm.adjusted_rand_score(t, c)),
                            "nmi": float(skm.normalized_mutual_info_score(t, c)),
                            "purity": purity(t, c),
                            "accuracy": clustering_accuracy(t, c),
                            "silhouette_by_label": silhouette(z[labelled], t, sample_size, seed)}
        else:
            labelled = None
    if batches is not None and len(np.unique(np.asarray(batches, dtype=object).astype(str))) >= 2:
        batches = np.asarray(batches, dtype=object).astype(str)
        bat = {"n_batches": int(len(np.unique(batches))),
               "silhouette_by_batch": silhouette(z, batches, sample_size, seed),
               "knn_entropy": knn_batch_entropy(z, batches, knn, None, sample_size, seed),
               "cluster_nmi": float(skm.normalized_mutual_info_score(batches, clusters))}
        if labelled is not None:
            t = labels[labelled].astype(str)
            zs, bs = z[labelled], batches[labelled]
            per = []
            for lab in np.unique(t):
                m = t == lab
                if len(np.unique(bs[m])) >= 2 and m.sum() >= 3:
                    per.append((m.sum(), silhouette(zs[m], bs[m], sample_size, seed)))
            bat["silhouette_by_batch_within_label"] = (float(sum(w * s for w, s in per) / sum(w for w, _ in per))
                                                       if per else float("nan"))
            bat["knn_entropy_within_label"] = knn_batch_entropy(zs, bs, knn, t, sample_size, seed)
        out["batch"] = bat
    return out


def evaluate_embeddings(frame: pd.DataFrame, items: Sequence[EmbedSlide], condition_on: str = "none",
                        truth_cells=None, sample_size: int = 5000, knn: int = 15, seed: int = 0) -> dict:
    """:func:`latent_metrics` of embedded cells (rows of :func:`hemoprofile.embed.slide.read_embeddings`),
    with the batch of each cell from ``items`` and labels from truth or a ``label`` column."""
    zcols = [c for c in frame.columns if c.startswith("z_")]
    by_slide = {i.slide: i for i in items}
    batches = np.array([(by_slide[s].batch or s) if s in by_slide else s for s in frame["slide"].astype(str)], object)
    labels = cohort_labels(frame, items, truth_cells)
    m = latent_metrics(frame[zcols].to_numpy(), frame["cluster"].to_numpy(), labels, batches, sample_size, knn, seed)
    m["condition_on"] = condition_on
    return m


def format_metrics(m: Mapping) -> str:
    """One or more readable lines of :func:`latent_metrics` output."""
    lines = [f"{m['n_cells']} cells, {m['n_clusters']} latent clusters: silhouette {m['silhouette']:.3f}, "
             f"Davies-Bouldin {m['davies_bouldin']:.3f}, Calinski-Harabasz {m['calinski_harabasz']:.1f}"]
    if "label" in m:
        lab = m["label"]
        lines.append(f"vs {lab['n_labels']} labels ({lab['n_labelled']} cells): ARI {lab['ari']:.3f}, NMI {lab['nmi']:.3f}, "
                     f"purity {lab['purity']:.3f}, accuracy {lab.get('accuracy', float('nan')):.3f}, silhouette by label {lab['silhouette_by_label']:.3f}")
    if "batch" in m:
        b = m["batch"]
        text = (f"batch mixing ({b['n_batches']} batches): silhouette by batch {b['silhouette_by_batch']:.3f}, "
                f"kNN batch entropy {b['knn_entropy']:.3f}, NMI(cluster, batch) {b['cluster_nmi']:.3f}")
        if "knn_entropy_within_label" in b:
            text += (f"; within label: silhouette by batch {b['silhouette_by_batch_within_label']:.3f}, "
                     f"kNN batch entropy {b['knn_entropy_within_label']:.3f}")
        lines.append(text)
    return "\n".join(lines)


def json_default(value):
    """``json.dumps`` ``default`` for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_json(path, obj) -> None:
    """Write a metrics dict as indented JSON, atomically (NaN written as NaN)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default, allow_nan=True))
