"""Section ``latent``: the embedding's cohort figures (latent maps, read from the workflow's PNG files)
and its clustering metrics, each with what it means."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from hemoprofile.report.html import data_table, esc, img, not_available, png_aspect, png_file_uri
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import have, try_read_json, why_missing


_EMBEDDING_METRIC_HELP = {
    "silhouette": "silhouette of the latent clusters (−1..1, higher = better separated)",
    "davies_bouldin": "Davies–Bouldin index of the clusters (lower = better separated)",
    "calinski_harabasz": "Calinski–Harabasz index (higher = better separated)",
    "ari": "adjusted Rand index, clusters vs reference labels (1 = identical)",
    "nmi": "normalised mutual information, clusters vs reference labels",
    "purity": "share of cells whose cluster's majority label is their own",
    "accuracy": "clustering accuracy: share of cells matched by the best one-to-one mapping of clusters to "
                "labels (Hungarian assignment; 1 = the labels up to renaming)",
    "silhouette_by_label": "silhouette of the reference labels in the latent space",
    "silhouette_by_batch": "silhouette of batches (near 0 or below = batches mixed, good)",
    "knn_entropy": "normalised entropy of batches among each cell's neighbours (1 = fully mixed)",
    "cluster_nmi": "NMI between clusters and batches (low = clusters are not batches)",
    "silhouette_by_batch_within_label": "silhouette of batches within each reference label (near 0 = mixed)",
    "knn_entropy_within_label": "kNN batch entropy within each reference label (1 = fully mixed)",
    "n_labelled": "cells with a reference label",
    "n_labels": "distinct reference labels",
    "n_batches": "batches (slides or the batch column)",
    "n_cells": "cells in the metrics sample",
    "n_clusters": "latent clusters",
    "condition_on": "what the conditional VAE was conditioned on (none: plain VAE)",
    "model_id": "embedder model id (SHA-256 prefix)",
}


def _flatten(data: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def render(ctx: ReportContext) -> str:
    parts = []
    figures = ctx.inputs.embedding_figures or {}
    shown = []
    for key, path in figures.items():
        if not have(path):
            ctx.notes.add(f"latent figure {key}: {why_missing(path, 'file')}")
            continue
        uri = png_file_uri(path)
        wide = " wide" if png_aspect(uri) > 1.8 else ""  # multi-panel figures take a whole row
        shown.append(f'<figure class="latentfig{wide}">{img(uri, key, cls="fig")}'
                     f"<figcaption>{esc(key.replace('_', ' '))}</figcaption></figure>")
    if shown:
        parts.append("<p>Each point is a cell on the first two principal components of its latent vector "
                     "(the same axes for every slide).</p>")
        parts.append(f'<div class="figs">{"".join(shown)}</div>')
    else:
        parts.append(not_available("no embedding figure " + ("file exists" if figures else "was given")))
    data, why = try_read_json(ctx.inputs.embedding_metrics, "embedding metrics")
    parts.append("<h3>Clustering metrics</h3>")
    if data is None:
        parts.append(not_available(why))
    else:
        rows = [{"metric": k, "value": v, "meaning": _EMBEDDING_METRIC_HELP.get(k.split(".")[-1], "")}
                for k, v in _flatten(data)]
        parts.append(data_table(pd.DataFrame(rows), sortable=False))
    return "".join(parts)
