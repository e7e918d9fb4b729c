"""The ``interaction_windows`` stage for one slide (:func:`slide_windows`): windows of the preprocessed
image, their contact counts and latent features -> ``<results>/<slide>/interaction/``.

Outputs
-------
``windows.parquet``, one row per window (columns of :func:`hemoprofile.interaction.windows.window_table_columns`):
``slide``, ``window`` (0..), ``kind`` (``cluster``: centred on a touching-cell cluster of clusters.parquet,
``random``: uniform, seeded), ``y0``, ``x0``, ``size`` (px); the regression target ``n_cells``,
``contacts``, ``ctc_leukocyte_contacts`` counted on ``target_source`` (``truth``: the simulator's
truth_labels.zarr and truth cell types; ``segmentation``: labels.zarr, cells.parquet centroids and the
ctc classifier's ``pred_ctc``); the same three counted on the segmentation (``seg_*``, for comparison
with the truth); ``zwin_<i>``: the project's VAE latent (posterior mean) of the window block-averaged
to the VAE's patch size; ``zcell_<i>``: the mean of the latents (embedding.parquet) of the segmented
cells in the window (zeros when it holds none).

``windows.zarr``: (n, C, S, S) uint8, the window block-averaged to ``input_size`` px (values [0, 1]
scaled to 0..255, the patches' dtype policy), row i = window i; what the CNN regressor sees.

``contacts.json``: the slide's totals over the whole image, segmentation (what a real slide has):
``n_cells``, ``n_ctc``, ``contacts``, ``ctc_leukocyte_contacts``; and ``truth_*`` the same from the
ground truth where there is one (null otherwise).

Memory: one window at a time (plus its halo) for the windows; the totals read the labels in tiles.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from hemoprofile.interaction.windows import (cells_in_window, centroid_lookup, count_contacts, downsample_window,
                                             slide_contacts, slide_rng, window_contacts, window_origins,
                                             window_table_columns)
from hemoprofile.io import atomic_output
from hemoprofile.io.ome_zarr import open_ome_zarr
from hemoprofile.io.patches import to_patch_dtype
from hemoprofile.io.tables import read_cells
from hemoprofile.vocabulary import CTC, to_unit

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the stage needs of the project's VAE (``hemoprofile.embed.slide.PatchEncoder`` is one; the
    workflow script hands it over, as stages do not import each other)."""

    patch_size: int
    latent_dim: int
    model_id: str

    def __call__(self, patches: np.ndarray, category: str | None = None) -> np.ndarray: ...


def _ctc_ids(ids: np.ndarray, is_ctc: np.ndarray | None) -> np.ndarray | None:
    return None if is_ctc is None else np.asarray(ids, np.int64)[np.asarray(is_ctc, bool)]


def _predicted_ctc(predictions_path: str | None, cells: pd.DataFrame) -> np.ndarray | None:
    """Whether each segmented cell is predicted CTC (None without a ``pred_ctc`` column)."""
    if not predictions_path or not os.path.exists(predictions_path):
        return None
    if "pred_ctc" not in pq.read_schema(predictions_path).names:
        return None
    pred = pd.read_parquet(predictions_path, columns=["cell_id", "pred_ctc"])
    if not np.array_equal(pred["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
        raise ValueError(f"{predictions_path}: rows are not the cells' of {len(cells)} cells (rerun classify)")
    return (pred["pred_ctc"].astype(str) == CTC).to_numpy()


def _totals(labels, ids: np.ndarray, ctc: np.ndarray | None) -> dict:
    pairs = slide_contacts(labels)
    contacts, ctc_leuk = count_contacts(pairs, ids, ctc)
    return {"n_cells": int(len(ids)), "n_ctc": None if ctc is None else int(len(ctc)), "contacts": contacts,
            "ctc_leukocyte_contacts": None if ctc is None else ctc_leuk}


def slide_windows(slide: str, *, preprocessed: str, labels: str, cells: str, clusters: str, embedding: str,
                  encoder: Encoder, out_dir: str, predictions: str | None = None, truth_labels: str | None = None,
                  truth_cells: pd.DataFrame | None = None, window_size: int = 128, input_size: int = 32,
                  cluster_windows: int = 16, random_windows: int = 16, halo_px: int = 64, seed: int = 0,
                  category: str | None = None, progress: Callable[[str], object] | None = None) -> dict:
    """Cut a slide's windows, count their contacts and encode them (see the module docstring).

    Parameters
    ----------
    slide : the slide's name.
    preprocessed, labels, cells, clusters, embedding, predictions : the slide's preprocessed.zarr,
        labels.zarr, cells.parquet, clusters.parquet, embedding.parquet and (optional) predictions.parquet.
    encoder : the project's VAE as a function (:class:`Encoder`; ``hemoprofile.embed.slide.patch_encoder``).
    out_dir : ``<results>/<slide>/interaction`` (its three files are written atomically).
    truth_labels, truth_cells : the synthetic slide's truth_labels.zarr and truth_cells.parquet (its rows
        or the cohort's); when given the targets come from them, else from the segmentation.
    window_size : window side (px, clipped to the image); ``input_size`` the side the CNN sees (a divisor).
    cluster_windows, random_windows : windows per slide of each kind (fewer cluster windows when the
        slide has fewer clusters).
    halo_px : labels are read this far around a window, so its cells are whole (extract's
        ``max_cell_diameter_px``).
    seed : the run's seed (random windows and the choice of cluster windows depend on it and the slide).
    category : the slide's condition value for a conditional VAE (its slide, batch or condition, as the
        embedder's ``condition_on``; unused for a plain VAE).

    Returns
    -------
    dict: ``slide``, ``windows``, ``target_source`` and the totals of ``contacts.json``.
    """
    say = progress or log.info
    image = open_ome_zarr(preprocessed).array
    seg = open_ome_zarr(labels).array
    c, h, w = (int(v) for v in image.shape)
    if int(window_size) % int(input_size):
        raise ValueError(f"interaction.window_size {window_size} px cannot be block-averaged to "
                         f"interaction.input_size {input_size} px (needs a multiple)")
    size = int(min(window_size, h, w))
    size -= size % int(input_size)  # an image smaller than the window: the largest multiple that fits
    if size < int(input_size):
        raise ValueError(f"{preprocessed}: image of {h} x {w} px is smaller than interaction.input_size {input_size}")
    cell_table = read_cells(cells, ["cell_id", "y", "x"])
    seg_ids, seg_y, seg_x = centroid_lookup(cell_table)
    seg_ctc = _ctc_ids(seg_ids, _predicted_ctc(predictions, cell_table))
    clusters_table = pd.read_parquet(clusters, columns=["y", "x"])
    d = int(encoder.latent_dim)
    z_cells = pd.read_parquet(embedding, columns=[f"z_{i}" for i in range(d)]).to_numpy(np.float32)
    if len(z_cells) != len(seg_ids):
        raise ValueError(f"{embedding}: {len(z_cells)} rows, cells.parquet {cells} has {len(seg_ids)} (rerun embed)")
    if int(encoder.patch_size) > size or size % int(encoder.patch_size):
        raise ValueError(f"window of {size} px cannot be block-averaged to the embedder's {encoder.patch_size} px patch")

    truth = None
    if truth_labels:
        if truth_cells is None:
            raise ValueError(f"slide {slide}: truth_labels given without truth_cells")
        t = truth_cells[truth_cells["slide"] == slide] if "slide" in truth_cells else truth_cells
        t_ids, t_y, t_x = centroid_lookup(t)
        t_ctc = t_ids[(t["cell_type"].astype(str) == CTC).to_numpy()]
        truth = (open_ome_zarr(truth_labels).array, t_ids, t_y, t_x, t_ctc)

    origins, kinds = window_origins(h, w, size, clusters_table[["y", "x"]].to_numpy(), int(cluster_windows),
                                    int(random_windows), slide_rng(seed, slide))
    rows, pixels, vae_input = [], [], []
    for i, (y0, x0) in enumerate(origins.tolist()):
        hy0, hy1, hx0, hx1 = max(y0 - halo_px, 0), min(y0 + size + halo_px, h), max(x0 - halo_px, 0), min(x0 + size + halo_px, w)
        members = cells_in_window(seg_ids, seg_y, seg_x, y0, x0, size)
        seg_n = len(members)
        seg_contacts, seg_ctc_leuk = window_contacts(np.asarray(seg[hy0:hy1, hx0:hx1]), members, seg_ctc)
        inside = np.isin(seg_ids, members)
        zcell = z_cells[inside].mean(axis=0) if inside.any() else np.zeros(z_cells.shape[1], np.float32)
        if truth is not None:
            t_lab, t_ids, t_y, t_x, t_ctc = truth
            t_members = cells_in_window(t_ids, t_y, t_x, y0, x0, size)
            n, contacts, ctc_leuk = (len(t_members), *window_contacts(np.asarray(t_lab[hy0:hy1, hx0:hx1]), t_members, t_ctc))
        else:
            n, contacts, ctc_leuk = seg_n, seg_contacts, seg_ctc_leuk
        unit = to_unit(np.asarray(image[:, y0:y0 + size, x0:x0 + size]))
        pixels.append(to_patch_dtype(downsample_window(unit, int(input_size)), "uint8"))
        vae_input.append(to_patch_dtype(downsample_window(unit, int(encoder.patch_size)), "uint8"))
        rows.append({"slide": slide, "window": i, "kind": kinds[i], "y0": y0, "x0": x0, "size": size,
                     "target_source": "truth" if truth is not None else "segmentation", "n_cells": n,
                     "contacts": contacts, "ctc_leukocyte_contacts": ctc_leuk, "seg_n_cells": seg_n,
                     "seg_contacts": seg_contacts, "seg_ctc_leukocyte_contacts": seg_ctc_leuk,
                     **{f"zcell_{k}": float(v) for k, v in enumerate(zcell)}})
    pixel_array = np.stack(pixels) if pixels else np.zeros((0, c, int(input_size), int(input_size)), np.uint8)
    table = pd.DataFrame(rows, columns=[col for col in window_table_columns(d) if not col.startswith("zwin_")])
    if len(vae_input):
        zwin = encoder(np.stack(vae_input), category)
        for k in range(d):
            table[f"zwin_{k}"] = zwin[:, k]
    else:
        for k in range(d):
            table[f"zwin_{k}"] = np.zeros(0, np.float32)
    table = table[window_table_columns(d)]
    for col in ("contacts", "n_cells", "seg_contacts", "seg_n_cells", "window", "y0", "x0", "size"):
        table[col] = table[col].astype(np.int64)

    totals = {"slide": slide, **_totals(seg, seg_ids, seg_ctc)}
    if truth is not None:
        truth_totals = _totals(truth[0], truth[1], truth[4])
        totals.update({f"truth_{k}": v for k, v in truth_totals.items()})
    os.makedirs(out_dir, exist_ok=True)
    with atomic_output(os.path.join(out_dir, "windows.parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_output(os.path.join(out_dir, "windows.zarr")) as tmp:
        arr = zarr.create_array(str(tmp), shape=pixel_array.shape, chunks=(max(1, min(64, len(pixel_array))), c,
                                int(input_size), int(input_size)), dtype=np.uint8, zarr_format=3,
                                attributes={"hemoprofile": {"window_size": size, "input_size": int(input_size),
                                                            "embedder": encoder.model_id}})
        if len(pixel_array):
            arr[:] = pixel_array
    with atomic_output(os.path.join(out_dir, "contacts.json")) as tmp:
        tmp.write_text(json.dumps(totals, indent=2) + "\n")
    say(f"{slide}: {len(table)} windows of {size} px ({kinds.count('cluster')} on clusters), target from "
        f"{table['target_source'].iloc[0] if len(table) else '-'}; slide contacts {totals['contacts']}")
    return {"windows": len(table), "target_source": "truth" if truth is not None else "segmentation", **totals}


def read_windows(out_dirs: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Concatenate slides' ``windows.parquet`` and ``windows.zarr`` (rows aligned)."""
    tables, arrays = [], []
    for d in out_dirs:
        table = pd.read_parquet(os.path.join(d, "windows.parquet"))
        arr = np.asarray(zarr.open_array(os.path.join(d, "windows.zarr"), mode="r")[:])
        if len(arr) != len(table):
            raise ValueError(f"{d}: windows.zarr has {len(arr)} rows, windows.parquet {len(table)}")
        tables.append(table)
        arrays.append(arr)
    if not tables:
        raise ValueError("no interaction windows given")
    return pd.concat(tables, ignore_index=True), np.concatenate(arrays)
