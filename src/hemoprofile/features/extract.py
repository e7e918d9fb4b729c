"""The extract stage: per-cell table, image patches and touching-cell clusters, streamed tile by tile.

Inputs (one slide): ``labels.zarr`` (y, x) cell labels with slide-unique ids (0 = background),
``image.zarr`` (c, y, x) raw intensities and ``preprocessed.zarr`` (c, y, x) holding [0, 1].
Outputs: ``cells.parquet`` (one row per cell), ``patches.zarr`` (N x C x P x P, row i = cells row i) and
``clusters.parquet`` (:mod:`hemoprofile.features.cell_clusters`). Entry point: :func:`extract_slide`.

How it streams
--------------
A cell belongs to the tile (of the label image's chunk grid) that holds its centroid; the centroid's
tile is found with integer arithmetic (``sum of rows // area``) so every window agrees on it. Each
tile is read with a halo of ``max(max_cell_diameter_px + 1, patch_size // 2 + 1, cluster distance / 2 +
2)`` pixels: a cell whose centroid is in the tile lies within its diameter of the tile, its patch within
P/2, the 3x3 Laplacian needs one more pixel. A cell larger than ``max_cell_diameter_px`` is still
measured whole: when a cell owned by the tile touches the window's inner edge the window is grown
(doubling the halo) and read again, with a warning. Windows are read through a cache of decoded chunks
(:class:`~hemoprofile.features.windows.WindowReader`), rows are buffered into parquet row groups of ``ROW_GROUP_ROWS`` and patches
into zarr chunks, so memory is about one window's chunks plus one row group plus one chunk of patches,
whatever the number of cells (measured: peak RSS 357 MB for 26k cells, 365 MB for 103k); only cluster
adjacency pairs (16 bytes per touching pair) accumulate.

A first pass writes the measured rows to a temporary parquet file; a second pass streams it back, adds
``cluster_id`` (clusters are known only once every tile has been seen) and the gate label
(:mod:`hemoprofile.features.gating`, whose slide-relative thresholds need the slide's feature distribution) and
writes ``cells.parquet``. Every output is written atomically.

``cells.parquet`` columns (units; C = each channel name of image.zarr, e.g. DAPI, CK, VIM, CD45)
-----------------------------------------------------------------------------------------------------
==========================  ===========  ==============================================================
slide                       string       slide name
cell_id                     int64        the cell's label id in labels.zarr; (slide, cell_id) is the key
tile                        int32        row-major index of the tile (labels chunk grid) holding the
                                         centroid
y, x                        float64      centroid, px (row, column of the slide; pixel centres at
                                         integers)
y_um, x_um                  float64      centroid, µm (null when the pixel size is unknown)
bbox_y0, bbox_x0,           int32        bounding box, px, half-open [y0, y1) x [x0, x1)
bbox_y1, bbox_x1
area                        int32        pixels
area_um2                    float32      µm² (null when the pixel size is unknown)
perimeter                   float32      px, as ``skimage.measure.perimeter`` (4-neighbourhood)
eccentricity                float32      of the ellipse with the same second moments, 0 (circle)..1
solidity                    float32      area / area of the convex hull of the cell's pixel squares
                                         (a polygon area; 1 for a rectangle, 0.94 for a 175-px ellipse)
nucleus_area                int32        pixels of the cell above the slide's nucleus threshold
                                         (``nucleus_channel`` of preprocessed.zarr; the threshold is
                                         Otsu's over labelled pixels of up to ``threshold_sample_tiles``
                                         tiles, once per slide); null without that channel
nucleus_ratio               float32      nucleus_area / area (nucleus-to-cell area ratio)
orientation_deg             float32      major axis angle, degrees in (-90, 90], of the second moments of
                                         the cell's nucleus pixels (those counted in nucleus_area; the
                                         whole mask when it has fewer than 3 or no nucleus channel); image
                                         axes: 0 = along x (columns), +45 = towards +x and +y (down-right
                                         on screen); embed.orientation rotates patches by it
mean_C, max_C               float32      mean and maximum RAW intensity (image.zarr units, e.g. ADU)
integrated_C                float64      sum of RAW intensity over the cell
texture_C                   float32      standard deviation of the 3x3 Laplacian of the preprocessed
                                         channel ([0, 1] units) over the cell: fine texture/granularity
at_border                   bool         the cell touches the slide's outer edge (it may be cut)
cluster_id                  int64        touching-cell cluster (clusters.parquet), -1 when in none
<gating.column>             string       gate label (default column ``gate_label``), when gating is on
==========================  ===========  ==============================================================

Rows are ordered by tile (row-major), then by cell_id. Each label id is taken to be one object (as the
segmentation stage writes them); an id used for two far-apart objects would be measured as one. The
schema metadata key ``hemoprofile`` holds the provenance (settings, nucleus threshold, gate thresholds,
channel names, pixel size) as JSON.

``patches.zarr``
----------------
A zarr v3 array (N, C, P, P) at the folder's root, chunks (``PATCH_CHUNK_CELLS``, 1, P, P) compressed
with Blosc-zstd (no shuffle for uint8, byte shuffle for 16-bit types: both measured smaller than
bitshuffle, see :class:`hemoprofile.io.patches.PatchWriter`); attributes under ``hemoprofile``: ``channel_names``, ``patch_size``,
``dtype``, ``dtype_policy``, ``mask_neighbours``, ``mask_background``, ``background_margin_px``,
``n_cells``, ``slide``, ``row_order``. Patch i is centred on cell i's centroid: pixel (P // 2, P // 2)
is the slide pixel nearest the centroid (``floor(centroid + 0.5)``). Values come from preprocessed.zarr
([0, 1]) stored as ``dtype``: uint8 = round(v x 255), uint16 = round(v x 65535), float16 = v. Pixels
beyond the slide are 0; with ``mask_neighbours`` pixels of other cells are 0; with ``mask_background``
background pixels (label 0) farther than ``background_margin_px`` from the cell are 0 too. Both masks
are on by default: they keep a leukocyte's 32 px uint8 patch near 1.3 KB on disk (unmasked: about
2.2 KB, mostly incompressible background noise and neighbours) and keep neighbours out of what
classifiers and embeddings learn.
Read it with :func:`hemoprofile.io.patches.open_patch_array`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import hemoprofile
from hemoprofile import io
from hemoprofile.features import cell_clusters, gating
from hemoprofile.features.measure import measure_cells, nucleus_threshold
from hemoprofile.features.patches import cut_patches
from hemoprofile.features.settings import resolve_extract
from hemoprofile.features.windows import WindowReader, owned_cells, required_halo
from hemoprofile.io.patches import PatchWriter, patch_attributes, to_patch_dtype
from hemoprofile.io.tables import cells_schema, open_parquet_stream
from hemoprofile.vocabulary import to_unit

#: Stage version written into the outputs' provenance; the rule passes the same as params. Bump when
#: the outputs change (hemoprofile.STAGE_VERSIONS["extract"] takes precedence once it is listed there).
STAGE_VERSION = {"stage": "extract", "version": int(hemoprofile.STAGE_VERSIONS.get("extract", 1))}

#: Rows per parquet row group of cells.parquet (bounds the table rows held in memory).
ROW_GROUP_ROWS = 16384

#: Consecutive tiles of a row measured by one thread as one block (with threads > 1); at most 2 x threads
#: blocks' results are held at once.
TILES_PER_BLOCK = 8


def _open_inputs(labels_path, image_path, preprocessed_path):
    labels = io.open_ome_zarr(labels_path)
    raw = io.open_ome_zarr(image_path)
    pre = io.open_ome_zarr(preprocessed_path)
    if labels.array.ndim != 2:
        raise ValueError(f"{labels_path}: a label image must be (y, x), got shape {labels.array.shape}")
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise ValueError(f"{labels_path}: labels must be integers, got {labels.array.dtype}")
    for path, img in ((image_path, raw), (preprocessed_path, pre)):
        if img.array.ndim != 3 or tuple(img.array.shape[1:]) != tuple(labels.array.shape):
            raise ValueError(f"{path}: shape {img.array.shape} does not match the labels' (c, "
                             f"{labels.array.shape[0]}, {labels.array.shape[1]}) from {labels_path}")
    if list(raw.channel_names) != list(pre.channel_names):
        raise ValueError(f"{image_path} channels {raw.channel_names} differ from {preprocessed_path}'s "
                         f"{pre.channel_names}")
    return labels, raw, pre


def _iter_tile_results(labels, raw, pre, cfg, threshold, nucleus_index, distance_px, say, threads=1):
    """Yield per tile, in row-major tile order: (tile index, measured columns, patches, adjacency pairs).

    Runs of consecutive tiles are measured on ``threads`` forked worker processes
    (:func:`hemoprofile.io.ordered_map` with ``processes=True``: the per-cell measuring holds the GIL, so
    threads kept only ~1.1 cores busy); each worker reads through its own :class:`WindowReader`, and a
    tile's result depends only on its window, so it is the same whichever worker measures it.
    """
    lab_arr = labels.array
    slide_h, slide_w = (int(s) for s in lab_arr.shape)
    tile_size = int(lab_arr.chunks[-1])
    base_halo = required_halo(cfg, distance_px)
    names = list(raw.channel_names)
    p = int(cfg["patch_size"])
    tiles = list(io.iter_tiles((slide_h, slide_w), tile_size))
    n_cols = math.ceil(slide_w / tile_size)
    report_every = max(1, math.ceil(len(tiles) / 10))
    local = threading.local()

    def measure_tile(tile):
        if not hasattr(local, "readers"):
            local.readers = tuple(WindowReader(a.array) for a in (labels, raw, pre))
        lab_reader, raw_reader, pre_reader = local.readers
        halo, warnings = base_halo, []
        while True:
            wy0, wy1, wx0, wx1 = io.halo_window(tile, halo, (slide_h, slide_w))
            lab = lab_reader.read(wy0, wy1, wx0, wx1)
            owned, truncated = owned_cells(lab, (wy0, wy1, wx0, wx1, slide_h, slide_w), tile)
            if not truncated:
                break
            warnings.append(f"WARNING tile {tile.row},{tile.col}: a cell is larger than max_cell_diameter_px="
                            f"{cfg['max_cell_diameter_px']}; re-reading with halo {2 * halo}")
            halo *= 2
        core = (slice(tile.y0 - wy0, tile.y1 - wy0), slice(tile.x0 - wx0, tile.x1 - wx0))
        pairs = cell_clusters.adjacent_pairs(lab, distance_px, core) if lab.any() else np.empty((0, 2), np.int64)
        if owned.size:
            raw_w = raw_reader.read(wy0, wy1, wx0, wx1)
            pre_w = to_unit(pre_reader.read(wy0, wy1, wx0, wx1))
            cols = measure_cells(
                lab, raw_w, pre_w, owned, channel_names=names, origin=(wy0, wx0),
                slide_shape=(slide_h, slide_w), nucleus_channel=nucleus_index, nucleus_threshold=threshold,
                pixel_size_um=labels.pixel_size_um or raw.pixel_size_um,
            )
            centres = np.stack([np.floor(cols["y"] + 0.5) - wy0, np.floor(cols["x"] + 0.5) - wx0], axis=1)
            patches = cut_patches(
                to_patch_dtype(pre_w, cfg["patch_dtype"]), lab, owned, centres.astype(np.int64), p,
                mask_neighbours=bool(cfg["mask_neighbours"]), mask_background=bool(cfg["mask_background"]),
                background_margin_px=int(cfg["background_margin_px"]),
            )
        else:
            cols, patches = None, None
        return warnings, (tile.row * n_cols + tile.col, cols, patches, pairs)

    # a block is a run of up to TILES_PER_BLOCK consecutive tiles of one row, measured by one thread in
    # order: its reader's chunk cache then serves the run as it serves the one-thread loop (a tile per
    # block would hand neighbouring tiles to different threads and decode their shared chunks twice)
    runs = [row[i:i + TILES_PER_BLOCK] for row in _tile_rows(tiles) for i in range(0, len(row), TILES_PER_BLOCK)]
    done = 0
    for run in io.ordered_map(lambda run: [measure_tile(t) for t in run], runs, threads,
                                  processes=True):
        for warnings, result in run:
            for warning in warnings:  # said here, in tile order, not from the worker threads
                say(warning)
            done += 1
            if done % report_every == 0 or done == len(tiles):
                say(f"{done}/{len(tiles)} tiles")
            yield result


def _tile_rows(tiles: list) -> list[list]:
    """The tiles (row-major) grouped by tile row."""
    rows: dict[int, list] = {}
    for tile in tiles:
        rows.setdefault(tile.row, []).append(tile)
    return list(rows.values())


def _arrow_column(values, arrow_type: pa.DataType) -> pa.Array:
    """A numpy column as an arrow array of ``arrow_type``; NaN becomes null (also in integer columns)."""
    values = np.asarray(values)
    missing = np.isnan(values) if values.dtype.kind == "f" else None
    if missing is not None and missing.any():
        filled = np.where(missing, 0, values)
        return pa.array(filled.astype(arrow_type.to_pandas_dtype()), mask=missing)
    return pa.array(values.astype(arrow_type.to_pandas_dtype()))


def _columns_to_table(cols: Mapping[str, np.ndarray], slide: str, tile_index: int, schema: pa.Schema) -> pa.Table:
    n = len(cols["cell_id"])
    arrays = []
    for field in schema:
        name = field.name
        if name == "slide":
            arrays.append(pa.array([slide] * n, pa.string()))
        elif name == "tile":
            arrays.append(pa.array(np.full(n, tile_index, np.int32)))
        elif name == "cluster_id":
            arrays.append(pa.array(np.full(n, -1, np.int64)))
        else:
            arrays.append(_arrow_column(cols[name], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def extract_slide(
    labels_path: str | os.PathLike,
    image_path: str | os.PathLike,
    preprocessed_path: str | os.PathLike,
    cells_path: str | os.PathLike,
    patches_path: str | os.PathLike,
    clusters_path: str | os.PathLike,
    extract_cfg: Mapping | None = None,
    gating_cfg: Mapping | None = None,
    *,
    slide: str | None = None,
    progress: Callable[[str], object] | None = print,
    threads: int | None = 1,
) -> dict:
    """Extract one slide's cells table, patches and clusters, tile by tile (see the module docstring).

    Parameters
    ----------
    labels_path : ``labels.zarr`` (y, x) with slide-unique ids.
    image_path : ``image.zarr`` (c, y, x) raw.
    preprocessed_path : ``preprocessed.zarr`` (c, y, x) in [0, 1].
    cells_path, patches_path, clusters_path : outputs (written atomically).
    extract_cfg : the ``extract`` config section (the schema's defaults fill what is missing).
    gating_cfg : the ``gating`` section (:mod:`hemoprofile.features.gating`); ``enabled: false`` skips gating.
    slide : slide name (default: the folder holding ``cells_path``).
    progress : receives progress lines (None: silent).
    threads : tiles measured at once; results are written in tile order, so every output is byte for
        byte the same for any number (:func:`hemoprofile.io.ordered_map`); memory grows by about
        ``2 x threads`` tiles' windows and results.

    Returns
    -------
    dict: ``slide``, ``n_cells``, ``n_clusters``, ``n_tiles``, ``seconds``, ``cells_per_second``,
    ``nucleus_threshold``, ``gate_counts`` (label -> cells), ``halo``.

    Raises
    ------
    ValueError naming the files when the inputs' shapes or channels disagree, or when a cluster distance
    in µm is asked for an image without a pixel size.

    Example
    -------
    >>> extract_slide("results/S1/labels.zarr", "results/S1/image.zarr", "results/S1/preprocessed.zarr",
    ...               "results/S1/cells.parquet", "results/S1/patches.zarr",
    ...               "results/S1/clusters.parquet")  # doctest: +SKIP
    """
    started = time.perf_counter()
    threads = io.resolve_threads(threads)
    cfg = resolve_extract(extract_cfg)
    gate_cfg = gating.resolve_gating(gating_cfg)
    gate_on = bool(gate_cfg["enabled"]) and bool(gate_cfg["gates"])
    say_raw = progress or (lambda _m: None)
    cells_path, patches_path, clusters_path = Path(cells_path), Path(patches_path), Path(clusters_path)
    slide = slide or cells_path.parent.name
    say = lambda m: say_raw(f"extract {slide}: {m}")  # noqa: E731

    labels, raw, pre = _open_inputs(labels_path, image_path, preprocessed_path)
    names = [str(c) for c in raw.channel_names]
    pixel_size = labels.pixel_size_um or raw.pixel_size_um
    distance_um = float(cfg["cluster_distance_um"])
    if distance_um > 0 and not pixel_size:
        raise ValueError(f"extract.cluster_distance_um = {distance_um} needs the pixel size, but neither "
                         f"{labels_path} nor {image_path} records one; set it to 0 (touching cells)")
    distance_px = distance_um / pixel_size if distance_um > 0 else 0.0
    tile_size = int(labels.array.chunks[-1])
    nucleus_name = str(cfg["nucleus_channel"])
    nucleus_index = names.index(nucleus_name) if nucleus_name in names else None
    threshold = (nucleus_threshold(labels.array, pre.array, nucleus_index, tile_size, cfg["threshold_sample_tiles"])
                 if nucleus_index is not None else float("nan"))
    if nucleus_index is None:
        say(f"WARNING no channel {nucleus_name!r} in {names}: nucleus columns are null")
    say(f"{labels.array.shape[0]}x{labels.array.shape[1]} px, tile {tile_size}, halo "
        f"{required_halo(cfg, distance_px)}, nucleus threshold {threshold:.4f}")

    gate_column = gate_cfg["column"] if gate_on else None
    pass1_schema = cells_schema(names)
    final_schema = cells_schema(names, gate_column)
    if gate_on:  # fail before the work, not after it
        unknown = [f for f in gating.gate_features(gate_cfg) if f not in pass1_schema.names]
        if unknown:
            raise ValueError(
                f"gating: feature(s) {unknown} are not cells.parquet columns for the channels {names} of "
                f"{image_path}; change gating.gates or set gating.enabled to false"
            )
        if gate_column in pass1_schema.names:
            raise ValueError(f"gating.column {gate_column!r} would replace a cells.parquet column")
    provenance = {
        **STAGE_VERSION, "hemoprofile_version": hemoprofile.__version__, "slide": slide,
        "settings": cfg, "channel_names": names, "pixel_size_um": pixel_size,
        "nucleus_channel": nucleus_name, "nucleus_threshold": threshold if np.isfinite(threshold) else None,
        "inputs": {"labels": str(labels_path), "image": str(image_path), "preprocessed": str(preprocessed_path)},
    }
    # named like atomic_output's temporary path, so the next run removes it when this one was killed
    pass1_path = cells_path.with_name(f"{cells_path.name}.tmp-pass1-{os.getpid()}")
    accumulator = cell_clusters.ClusterAccumulator()
    cell_ids_digest = io.CellIdsDigest()
    n_cells, n_tiles = 0, 0
    try:
        with contextlib.ExitStack() as stack:
            patches_tmp = stack.enter_context(io.atomic_output(patches_path))
            cells_tmp = stack.enter_context(io.atomic_output(cells_path))
            clusters_tmp = stack.enter_context(io.atomic_output(clusters_path))
            writer = PatchWriter(
                patches_tmp, len(names), cfg["patch_size"], cfg["patch_dtype"],
                patch_attributes(names, cfg["patch_size"], cfg["patch_dtype"], slide=slide,
                                 mask_neighbours=bool(cfg["mask_neighbours"]),
                                 mask_background=bool(cfg["mask_background"]),
                                 background_margin_px=int(cfg["background_margin_px"]),
                                 pixel_size_um=pixel_size, stage=STAGE_VERSION),
                compression_level=cfg["compression_level"],
            )
            pending: list[pa.Table] = []
            pending_rows = 0
            with pq.ParquetWriter(pass1_path, pass1_schema) as pass1:
                for tile_index, cols, patches, pairs in _iter_tile_results(
                        labels, raw, pre, cfg, threshold, nucleus_index, distance_px, say, threads):
                    n_tiles += 1
                    accumulator.add(pairs)
                    if cols is None:
                        continue
                    pending.append(_columns_to_table(cols, slide, tile_index, pass1_schema))
                    pending_rows += len(cols["cell_id"])
                    writer.append(patches)
                    cell_ids_digest.update(cols["cell_id"])
                    n_cells += len(cols["cell_id"])
                    if pending_rows >= ROW_GROUP_ROWS:
                        pass1.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                        pending, pending_rows = [], 0
                if pending:
                    pass1.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                else:
                    pass1.write_table(pass1_schema.empty_table())
            n_patches = writer.close(cell_ids_sha256=cell_ids_digest.hexdigest())
            if n_patches != n_cells:  # a bug guard: the row-order contract must hold
                raise RuntimeError(f"{n_patches} patches for {n_cells} cells")

            clustered_ids, cluster_ids = accumulator.resolve()
            n_clusters = int(cluster_ids.max()) + 1 if len(cluster_ids) else 0
            thresholds = None
            if gate_on:
                sample = gating.sample_parquet_columns(pass1_path, gating.gate_features(gate_cfg),
                                                       gate_cfg["sample_size"])
                thresholds = gating.resolve_thresholds(gate_cfg, sample)
                provenance["gating"] = {"config": gate_cfg, "thresholds": thresholds}
            provenance["n_clusters"] = n_clusters
            final_schema = final_schema.with_metadata({"hemoprofile": json.dumps(provenance, default=str)})
            geometry = cell_clusters.ClusterGeometry(n_clusters)
            gate_counts: dict[str, int] = {}
            with pq.ParquetWriter(cells_tmp, final_schema) as final:
                source = open_parquet_stream(pass1_path, "first-pass cells table")
                for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
                    table = pa.Table.from_batches([batch], schema=pass1_schema)
                    ids = table.column("cell_id").to_numpy()
                    cid = cell_clusters.lookup_cluster_ids(ids, clustered_ids, cluster_ids)
                    table = table.set_column(table.schema.get_field_index("cluster_id"), "cluster_id", pa.array(cid))
                    geometry.add(cid, *(table.column(c).to_numpy() for c in
                                        ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area", "y", "x")))
                    if gate_on:
                        feats = {f: table.column(f).to_numpy(zero_copy_only=False).astype(np.float64)
                                 for f in gating.gate_features(gate_cfg)}
                        gate = gating.apply_gates(feats, thresholds, gate_cfg["default_label"])
                        for label, count in zip(*np.unique(gate.astype(str), return_counts=True)):
                            gate_counts[str(label)] = gate_counts.get(str(label), 0) + int(count)
                        table = table.append_column(gate_column, pa.array(gate.tolist(), pa.string()))
                    final.write_table(table.cast(final_schema), row_group_size=ROW_GROUP_ROWS)
                if n_cells == 0:
                    final.write_table(final_schema.empty_table())
            pq.write_table(
                cell_clusters.cluster_table(slide, clustered_ids, cluster_ids, geometry, pixel_size)
                .replace_schema_metadata({"hemoprofile": json.dumps(provenance, default=str)}),
                clusters_tmp,
            )
    finally:
        pass1_path.unlink(missing_ok=True)

    seconds = time.perf_counter() - started
    rate = n_cells / seconds if seconds > 0 else float("inf")
    say(f"{n_cells} cells, {n_clusters} clusters in {seconds:.1f} s ({rate:.0f} cells/s); gates {gate_counts}")
    return {
        "slide": slide, "n_cells": n_cells, "n_clusters": n_clusters, "n_tiles": n_tiles,
        "seconds": seconds, "cells_per_second": rate, "nucleus_threshold": threshold,
        "gate_counts": gate_counts, "halo": required_halo(cfg, distance_px),
    }
