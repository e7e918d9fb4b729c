"""Section ``latent_conditions``: the latent clusters by condition (the table the workflow's
``clusters_by_condition`` rule writes, see :mod:`hemoprofile.embed.conditions`): a heatmap of each
cluster's log2 enrichment per condition, the table (sortable), and a gallery of each cluster's medoid
cells (patches.zarr rows)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile.io.patches import open_patch_array
from hemoprofile.report.html import (
    data_table,
    esc,
    figure_uri,
    img,
    new_figure,
    not_available,
    rgb_uri,
)
from hemoprofile.report.images import display_composite
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import have, try_read_table
from hemoprofile.vocabulary import to_unit

MAX_GALLERY_CLUSTERS = 40    # clusters shown in the gallery (all are in the table)
MAX_MEDOIDS = 8              # medoid cells shown per cluster
PATCH_ZOOM = 2               # patches are shown enlarged this many times


def _metadata(path) -> dict:
    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"hemoprofile")
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def conditions_of(table: pd.DataFrame, meta: dict) -> list[str]:
    """The table's known conditions: from its metadata, else from its ``share_<c>`` columns.

    Example
    -------
    >>> conditions_of(pd.DataFrame(columns=["cluster", "share_a", "share_b"]), {})
    ['a', 'b']
    """
    known = meta.get("conditions")
    if known:
        return [str(c) for c in known if f"share_{c}" in table.columns]
    return [c[len("share_"):] for c in table.columns if c.startswith("share_")]


def heatmap_uri(table: pd.DataFrame, conditions: list[str], alpha: float) -> str:
    """Clusters (rows) x conditions (columns) coloured by log2 enrichment, each cell labelled with the
    normalised share; clusters with BH-adjusted p < alpha marked * (** when the patient test agrees)."""
    values = np.array([table[f"log2_enrichment_{c}"].to_numpy(np.float64) for c in conditions]).T
    shares = np.array([table[f"share_{c}"].to_numpy(np.float64) for c in conditions]).T
    lim = max(float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0, 0.5)
    fig = new_figure(1.6 + 1.1 * len(conditions), 1.2 + 0.32 * len(table))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(shares[i, j]):
                ax.text(j, i, f"{shares[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if abs(values[i, j]) > 0.6 * lim else "black")
    p = table["p_adjusted"].to_numpy(np.float64)
    supported = table["patient_supported"].to_numpy(bool) if "patient_supported" in table else np.zeros(len(p), bool)
    labels = [f"{int(c)} (n={int(n):,}){' **' if s else (' *' if q < alpha else '')}"
              for c, n, q, s in zip(table["cluster"], table["n_cells"], p, supported)]
    ax.set_yticks(range(len(table)), labels, fontsize=7)
    ax.set_xticks(range(len(conditions)), conditions, fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("latent cluster")
    fig.colorbar(im, ax=ax, label="log2 enrichment", shrink=0.8)
    return figure_uri(fig)


def _table_view(table: pd.DataFrame, conditions: list[str], meta: dict) -> pd.DataFrame:
    per_cond = meta.get("patients_per_condition") or {}
    view = table[["cluster", "n_cells", "fraction", "n_unknown"]].copy()
    for c in conditions:
        view[f"share {c}"] = table[f"share_{c}"]
        view[f"log2 enr. {c}"] = table[f"log2_enrichment_{c}"]
        total = per_cond.get(c)
        view[f"patients {c}"] = [f"{int(v)}/{total}" if total else int(v) for v in table[f"patients_{c}"]]
    for col in ("test", "p_adjusted", "p_patients_adjusted", "enriched_in", "patient_supported", "top_patient",
                "top_patient_share"):
        if col in table:
            view[col] = table[col]
    return view


def _gallery(ctx: ReportContext, table: pd.DataFrame) -> str:
    paths = {s.slide: s.paths for s in ctx.slides}
    arrays: dict[str, tuple] = {}
    rows_html, missing = [], set()
    for _, r in table[table["n_cells"] > 0].head(MAX_GALLERY_CLUSTERS).iterrows():
        tiles = []
        for slide, cell, row in list(zip(r["medoid_slides"], r["medoid_cell_ids"], r["medoid_rows"]))[:MAX_MEDOIDS]:
            if slide not in arrays:
                path = (paths.get(str(slide)) or {}).get("patches")
                try:
                    arrays[slide] = open_patch_array(path)[:2] if have(path) else None
                except ValueError:
                    arrays[slide] = None
            if arrays[slide] is None or int(row) >= arrays[slide][0].shape[0]:
                missing.add(str(slide))
                tiles.append('<figure class="cell"><div class="noimg">no image</div></figure>')
                continue
            array, channels = arrays[slide]
            rgb = display_composite(to_unit(np.asarray(array[int(row)])), channels)
            tiles.append(f'<figure class="cell">{img(rgb_uri(rgb), f"{slide} cell {cell}", width=PATCH_ZOOM * rgb.shape[1], pixelated=True)}'
                         f"<figcaption>{esc(slide)} · cell {int(cell)}</figcaption></figure>")
        flag = f" · enriched in {esc(r['enriched_in'])}" if r.get("enriched_in") else ""
        rows_html.append(f"<h4>Cluster {int(r['cluster'])} · {int(r['n_cells']):,} cells{flag}</h4>"
                         f'<div class="gallery">{"".join(tiles)}</div>')
    if missing:
        ctx.notes.add(f"latent clusters by condition: no patches.zarr for medoids of {', '.join(sorted(missing))}")
    more = len(table) - MAX_GALLERY_CLUSTERS
    tail = f"<p>… and {more} more clusters (in the table).</p>" if more > 0 else ""
    return "".join(rows_html) + tail


def render(ctx: ReportContext) -> str:
    path = ctx.inputs.clusters_by_condition
    table, why = try_read_table(path, "clusters-by-condition table")
    if table is None:
        return not_available(why)
    if not len(table) or "cluster" not in table:
        return not_available(f"clusters-by-condition table {path} has no clusters")
    meta = _metadata(path)
    conditions = conditions_of(table, meta)
    alpha = float(meta.get("alpha", 0.05))
    on = meta.get("condition_on") or "none"
    model = "the conditional VAE (conditioned on " + esc(on) + ")" if on != "none" else "the VAE"
    per_cond = meta.get("patients_per_condition") or {}
    parts = [f"<p>{int(table['n_cells'].sum()):,} cells in {len(table)} latent clusters of {model}; conditions "
             + ", ".join(f"{esc(c)} ({per_cond.get(c, '?')} patients)" for c in conditions)
             + (f"; {int(table['n_unknown'].sum()):,} cells of patients whose condition is unknown are counted "
                "but not tested" if "n_unknown" in table and table["n_unknown"].sum() else "")
             + ".</p>",
             ("<p><b>Share</b>: the share of a cluster from each condition after normalising by each condition's "
             "cell count (as if every condition had given equally many cells). <b>log2 enrichment</b>: the "
             "cluster's frequency among a condition's cells over its frequency among all cells. Per cluster a "
             "test of cells (Fisher's exact for two conditions, chi-square for more; cluster vs rest) and a test "
             "of patients (each patient's fraction in the cluster, Mann–Whitney or Kruskal–Wallis), both "
             f"Benjamini–Hochberg adjusted. * adjusted p &lt; {alpha:g} on cells; ** on patients too. "
             f"<b>patients</b>: how many patients of each condition carry the cluster (≥ "
             f"{float(meta.get('carrier_fraction', 0.01)):.0%} of their cells), so a cluster made by one "
             "patient shows as such.</p>")]
    if on != "none":
        parts.append("<p>The conditional VAE is given each cell's " + esc(on) + ": what it can explain from that "
                     "value alone is kept out of the latent space, so a cluster still enriched here differs in "
                     "which cells are present rather than by a shift shared by all cells of a condition.</p>")
    if len(conditions) >= 1 and all(f"log2_enrichment_{c}" in table for c in conditions):
        parts.append(f'<div class="figs"><figure class="latentfig">{img(heatmap_uri(table, conditions, alpha), "heatmap", cls="fig")}'
                     "<figcaption>log2 enrichment per cluster and condition; labels: normalised share</figcaption>"
                     "</figure></div>")
    else:
        parts.append(not_available("no known condition in the sample sheet (nothing to compare)"))
    parts.append("<h3>Clusters</h3>")
    parts.append(data_table(_table_view(table, conditions, meta), nowrap=True, scroll=True))
    parts.append(f"<h3>Medoids</h3><p>The cells nearest each cluster's centre in the latent space, nearest "
                 f"first (patches shown {PATCH_ZOOM}×).</p>")
    if "medoid_slides" in table:
        parts.append(_gallery(ctx, table))
    else:
        parts.append(not_available("the table has no medoid columns"))
    return "".join(parts)
