"""The extract stage: per-cell table, image patches and cell–cell clusters, streamed tile by tile.

Inputs (one slide): ``labels.zarr`` (y, x) cell labels with slide-unique ids (0 = background),
``image.zarr`` (c, y, x) raw intensities and ``preprocessed.zarr`` (c, y, x) holding [0, 1].
Outputs: ``cells.parquet`` (one row per cell), ``patches.zarr`` (N x C x P x P, row i = cells row i) and
``clusters.parquet`` (:mod:`hemoprofile.cell_clusters`). Entry point: :func:`extract_slide`.

How it streams
--------------
A cell belongs to the tile (of the label image's chunk grid) that holds its centroid; the centroid's
tile is found with integer arithmetic (``sum of rows // area``) so every window agrees on it. Each
tile is read with a halo of ``max(max_cell_diameter_px + 1, patch_size // 2 + 1, cluster distance / 2 +
2)`` pixels: a cell whose centroid is in the tile lies within its diameter of the tile, its patch within
P/2, the 3x3 Laplacian needs one more pixel. A cell larger than ``max_cell_diameter_px`` is still
measured whole: when a cell owned by the tile touches the window's inner edge the window is grown
(doubling the halo) and read again, with a warning. Windows are read through a cache of decoded chunks
(:class:`WindowReader`), rows are buffered into parquet row groups of ``ROW_GROUP_ROWS`` and patches
into zarr chunks, so memory is about one window's chunks plus one row group plus one chunk of patches,
whatever the number of cells (measured: peak RSS 357 MB for 26k cells, 365 MB for 103k); only cluster
adjacency pairs (16 bytes per touching pair) accumulate.

A first pass writes the measured rows to a temporary parquet file; a second pass streams it back, adds
``cluster_id`` (clusters are known only once every tile has been seen) and the gate label
(:mod:`hemoprofile.gating`, whose slide-relative thresholds need the slide's feature distribution) and
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
mean_C, max_C               float32      mean and maximum RAW intensity (image.zarr units, e.g. ADU)
integrated_C                float64      sum of RAW intensity over the cell
texture_C                   float32      standard deviation of the 3x3 Laplacian of the preprocessed
                                         channel ([0, 1] units) over the cell: fine texture/granularity
at_border                   bool         the cell touches the slide's outer edge (it may be cut)
cluster_id                  int64        cell–cell cluster (clusters.parquet), -1 when in none
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
bitshuffle, see :class:`PatchWriter`); attributes under ``hemoprofile``: ``channel_names``, ``patch_size``,
``dtype``, ``dtype_policy``, ``mask_neighbours``, ``mask_background``, ``background_margin_px``,
``n_cells``, ``slide``, ``row_order``. Patch i is centred on cell i's centroid: pixel (P // 2, P // 2)
is the slide pixel nearest the centroid (``floor(centroid + 0.5)``). Values come from preprocessed.zarr
([0, 1]) stored as ``dtype``: uint8 = round(v x 255), uint16 = round(v x 65535), float16 = v. Pixels
beyond the slide are 0; with ``mask_neighbours`` pixels of other cells are 0; with ``mask_background``
background pixels (label 0) farther than ``background_margin_px`` from the cell are 0 too. Both masks
are on by default: they keep a leukocyte's 32 px uint8 patch near 1.3 KB on disk (unmasked: about
2.2 KB, mostly incompressible background noise and neighbours) and keep neighbours out of what
classifiers and embeddings learn.
Read it with :func:`open_patches`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from scipy import ndimage
from skimage.filters import threshold_otsu

import hemoprofile
from hemoprofile import cell_clusters, gating, io
from hemoprofile.io.patches import PATCH_CHUNK_CELLS, PatchWriter, patch_attributes, to_patch_dtype  # noqa: F401
from hemoprofile.io.tables import cells_schema
from hemoprofile.vocabulary import to_unit

#: Stage version written into the outputs' provenance; the rule passes the same as params. Bump when
#: the outputs change (hemoprofile.STAGE_VERSIONS["extract"] takes precedence once it is listed there).
STAGE_VERSION = {"stage": "extract", "version": int(hemoprofile.STAGE_VERSIONS.get("extract", 1))}

#: Settings of the ``extract`` config section and their defaults.
DEFAULT_EXTRACT: dict = {
    "patch_size": 32,
    "patch_dtype": "uint8",
    "mask_neighbours": True,
    "mask_background": True,
    "background_margin_px": 2,
    "max_cell_diameter_px": 64,
    "cluster_distance_um": 0.0,
    "nucleus_channel": "DAPI",
    "threshold_sample_tiles": 16,
    "compression_level": 5,
}

PATCH_DTYPES = ("uint8", "uint16", "float16")

#: Cells per zarr chunk of patches.zarr: 256 x 1 x 32 x 32 uint8 = 256 KiB raw per chunk, large enough
#: for good compression, small enough that a training batch reads little more than it needs.

#: Rows per parquet row group of cells.parquet (bounds the table rows held in memory).
ROW_GROUP_ROWS = 16384

_PIXELS_PER_OTSU_TILE = 100_000  # labelled pixels kept per sampled tile for the nucleus threshold

# skimage.measure.perimeter's weights, indexed by 1 + 2 x (4-neighbours on the border) + 10 x (diagonal
# neighbours on the border) of a border pixel.
_PERIMETER_WEIGHTS = np.zeros(50, np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


# --- settings and schema -----------------------------------------------------------------------------------


def resolve_extract(extract_cfg: Mapping | None) -> dict:
    """Return complete extract settings (:data:`DEFAULT_EXTRACT` overridden by ``extract_cfg``).

    Raises
    ------
    ValueError for an unknown key, a patch dtype outside :data:`PATCH_DTYPES` or an out-of-range value.
    """
    cfg = dict(DEFAULT_EXTRACT)
    for key, value in (extract_cfg or {}).items():
        if key not in cfg:
            raise ValueError(f"extract: unknown key {key!r}; allowed: {', '.join(sorted(cfg))}")
        cfg[key] = value
    if str(cfg["patch_dtype"]) not in PATCH_DTYPES:
        raise ValueError(f"extract.patch_dtype must be one of {PATCH_DTYPES}, got {cfg['patch_dtype']!r}")
    if int(cfg["patch_size"]) < 4:
        raise ValueError(f"extract.patch_size must be >= 4, got {cfg['patch_size']}")
    if int(cfg["max_cell_diameter_px"]) < 1 or float(cfg["cluster_distance_um"]) < 0:
        raise ValueError("extract.max_cell_diameter_px must be >= 1 and cluster_distance_um >= 0")
    return cfg


# --- measuring cells in a window -----------------------------------------------------------------------------


def _perimeters(comp: np.ndarray, n: int) -> np.ndarray:
    """Perimeter of every object of a compact label image (ids 1..n), equal to skimage's per-object
    ``perimeter(neighborhood=4)`` of the object's own mask, computed for all objects at once."""
    lab = np.pad(comp, 1)
    centre = lab[1:-1, 1:-1]
    # border pixel: in an object, and a 4-neighbour is not in the same object (outside = not)
    border = np.zeros(lab.shape, bool)
    inner = centre != 0
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        inner &= lab[1 + dy : lab.shape[0] - 1 + dy, 1 + dx : lab.shape[1] - 1 + dx] == centre
    border[1:-1, 1:-1] = (centre != 0) & ~inner
    code = border[1:-1, 1:-1].astype(np.int32)
    for (dy, dx), weight in (
        ((-1, 0), 2), ((1, 0), 2), ((0, -1), 2), ((0, 1), 2),
        ((-1, -1), 10), ((-1, 1), 10), ((1, -1), 10), ((1, 1), 10),
    ):
        ys = slice(1 + dy, lab.shape[0] - 1 + dy)
        xs = slice(1 + dx, lab.shape[1] - 1 + dx)
        code += weight * (border[ys, xs] & (lab[ys, xs] == centre))
    b = border[1:-1, 1:-1]
    return np.bincount(centre[b] - 1, weights=_PERIMETER_WEIGHTS[np.minimum(code[b], 49)], minlength=n)[:n]


def _chain(points: list) -> list:
    """One half of Andrew's monotone chain over points sorted by (y, x)."""
    chain: list = []
    for p in points:
        py, px = p
        while len(chain) >= 2:
            (ay, ax), (by, bx) = chain[-2], chain[-1]
            if (by - ay) * (px - ax) - (bx - ax) * (py - ay) > 0:
                break
            chain.pop()
        chain.append(p)
    return chain


def _convex_areas(idx_s: np.ndarray, ys_s: np.ndarray, xs_s: np.ndarray, n: int) -> np.ndarray:
    """Area of the convex hull of each cell's pixel squares, from pixels grouped by cell, row-major.

    The hull of the pixel squares is the hull H of the pixel centres grown by a unit square, whose area
    is ``area(H) + width(H) + height(H) + 1`` (Minkowski sum with an axis-aligned unit square). Only the
    two ends of each pixel row can be vertices of H, so each cell's hull is built from 2 points per row
    (about 30 for a leukocyte), which keeps the per-cell Python work small.
    """
    out = np.full(n, np.nan)
    if idx_s.size == 0:
        return out
    new_row = np.flatnonzero((np.diff(idx_s) != 0) | (np.diff(ys_s) != 0)) + 1
    row_start = np.concatenate([[0], new_row])
    row_end = np.concatenate([new_row, [idx_s.size]])
    row_cell = idx_s[row_start]
    ends = np.stack([ys_s[row_start], xs_s[row_start], ys_s[row_start], xs_s[row_end - 1]], axis=1).tolist()
    bounds = np.searchsorted(row_cell, np.arange(n + 1)).tolist()
    for k in range(n):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        points = []
        x_min = x_max = ends[a][1]
        for y, left, _, right in ends[a:b]:
            points.append((y, left))
            if right != left:
                points.append((y, right))
            x_min = min(x_min, left)
            x_max = max(x_max, right)
        # points are sorted by (y, x): rows ascend, left <= right within a row
        lower = _chain(points)
        upper = _chain(points[::-1])
        hull = lower[:-1] + upper[:-1]
        twice = 0
        for i in range(len(hull)):
            y0, x0 = hull[i - 1]
            y1, x1 = hull[i]
            twice += x0 * y1 - x1 * y0
        out[k] = abs(twice) / 2.0 + (x_max - x_min) + (ends[b - 1][0] - ends[a][0]) + 1.0
    return out


def measure_cells(
    labels: np.ndarray,
    raw: np.ndarray,
    preprocessed: np.ndarray,
    cell_ids: np.ndarray,
    *,
    channel_names: Sequence[str],
    origin: tuple[int, int] = (0, 0),
    slide_shape: tuple[int, int] | None = None,
    nucleus_channel: int | None = None,
    nucleus_threshold: float | None = None,
    pixel_size_um: float | None = None,
) -> dict[str, np.ndarray]:
    """Measure the given cells of a label window (every listed cell must lie wholly in the window).

    Parameters
    ----------
    labels : (y, x) label window.
    raw : (c, y, x) raw intensities of the same window.
    preprocessed : (c, y, x) float32 [0, 1] preprocessed window (:func:`to_unit`).
    cell_ids : ascending ids of the cells to measure (others in the window are ignored).
    channel_names : one name per channel (column suffixes).
    origin : slide coordinates of ``labels[0, 0]``.
    slide_shape : (rows, cols) of the slide, for ``at_border``; defaults to ``origin + labels.shape``.
    nucleus_channel, nucleus_threshold : index into ``preprocessed`` and [0, 1] threshold of the nucleus
        stain; None: the nucleus columns are NaN.
    pixel_size_um : µm per pixel, for the µm columns (NaN when None).

    Returns
    -------
    dict of column name -> array, one entry per cell in ``cell_ids`` order (all cells.parquet columns
    except slide, tile, cluster_id and the gate label).

    Example
    -------
    >>> lab = np.zeros((8, 8), np.uint32); lab[2:5, 2:6] = 7
    >>> img = np.ones((1, 8, 8), np.uint16)
    >>> m = measure_cells(lab, img, img.astype(np.float32), np.array([7]), channel_names=["DAPI"])
    >>> int(m["area"][0]), float(m["y"][0]), float(m["x"][0]), int(m["bbox_x1"][0])
    (12, 3.0, 3.5, 6)
    """
    lab = np.asarray(labels)
    cell_ids = np.asarray(cell_ids, np.int64)
    n = len(cell_ids)
    h, w = lab.shape
    oy, ox = int(origin[0]), int(origin[1])
    slide_h, slide_w = (oy + h, ox + w) if slide_shape is None else (int(s) for s in slide_shape)
    # compact ids 1..n for the listed cells, 0 elsewhere
    comp = np.zeros(lab.shape, np.int32)
    if n:
        pos = np.searchsorted(cell_ids, lab)
        pos_c = np.minimum(pos, n - 1)
        hit = (cell_ids[pos_c] == lab) & (lab != 0)
        comp[hit] = pos_c[hit] + 1
    sel = comp > 0
    idx = comp[sel] - 1
    ys, xs = np.nonzero(sel)
    area = np.bincount(idx, minlength=n).astype(np.int64)
    safe_area = np.maximum(area, 1)
    cy_local = np.bincount(idx, weights=ys, minlength=n) / safe_area
    cx_local = np.bincount(idx, weights=xs, minlength=n) / safe_area
    dy = ys - cy_local[idx]
    dx = xs - cx_local[idx]
    var_y = np.bincount(idx, weights=dy * dy, minlength=n) / safe_area
    var_x = np.bincount(idx, weights=dx * dx, minlength=n) / safe_area
    cov = np.bincount(idx, weights=dy * dx, minlength=n) / safe_area
    half_trace = (var_y + var_x) / 2
    root = np.sqrt(((var_y - var_x) / 2) ** 2 + cov**2)
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / l1, 0.0, 1.0)), 0.0)

    slices = ndimage.find_objects(comp, max_label=n)
    bbox = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) if s is not None else (0, 0, 0, 0)
                     for s in slices], np.int64).reshape(n, 4)
    # pixels grouped by cell (stable: row-major inside each cell), reused for maxima and hull rows
    order = np.argsort(idx, kind="stable")
    idx_s, ys_s, xs_s = idx[order], ys[order], xs[order]
    present = area > 0
    starts = np.concatenate([[0], np.cumsum(area)[:-1]])[present]
    convex_area = _convex_areas(idx_s, ys_s, xs_s, n)

    px = float(pixel_size_um) if pixel_size_um else float("nan")
    y = cy_local + oy
    x = cx_local + ox
    out: dict[str, np.ndarray] = {
        "cell_id": cell_ids,
        "y": y, "x": x, "y_um": y * px, "x_um": x * px,
        "bbox_y0": bbox[:, 0] + oy, "bbox_x0": bbox[:, 1] + ox,
        "bbox_y1": bbox[:, 2] + oy, "bbox_x1": bbox[:, 3] + ox,
        "area": area, "area_um2": area * px * px,
        "perimeter": _perimeters(comp, n),
        "eccentricity": eccentricity,
        "solidity": area / np.where(convex_area > 0, convex_area, np.nan),
    }
    if nucleus_channel is not None and nucleus_threshold is not None and np.isfinite(nucleus_threshold):
        nucleus = preprocessed[nucleus_channel][sel] > nucleus_threshold
        nucleus_area = np.bincount(idx[nucleus], minlength=n)
        out["nucleus_area"] = nucleus_area
        out["nucleus_ratio"] = nucleus_area / safe_area
    else:
        out["nucleus_area"] = np.full(n, np.nan)
        out["nucleus_ratio"] = np.full(n, np.nan)
    for c, name in enumerate(channel_names):
        values = raw[c]
        total = np.bincount(idx, weights=values[sel].astype(np.float64), minlength=n)
        out[f"mean_{name}"] = total / safe_area
        maxima = np.full(n, np.nan)
        if starts.size:
            maxima[present] = np.maximum.reduceat(values[sel][order], starts).astype(np.float64)
        out[f"max_{name}"] = maxima
        out[f"integrated_{name}"] = total
    for c, name in enumerate(channel_names):
        lap = ndimage.laplace(preprocessed[c].astype(np.float32, copy=False))[sel].astype(np.float64)
        s1 = np.bincount(idx, weights=lap, minlength=n) / safe_area
        s2 = np.bincount(idx, weights=lap * lap, minlength=n) / safe_area
        out[f"texture_{name}"] = np.sqrt(np.maximum(s2 - s1 * s1, 0.0))
    out["at_border"] = ((out["bbox_y0"] == 0) | (out["bbox_x0"] == 0)
                        | (out["bbox_y1"] == slide_h) | (out["bbox_x1"] == slide_w))
    return out


def cut_patches(
    image: np.ndarray,
    labels: np.ndarray,
    cell_ids: np.ndarray,
    centres: np.ndarray,
    patch_size: int,
    *,
    mask_neighbours: bool = False,
    mask_background: bool = False,
    background_margin_px: int = 2,
) -> np.ndarray:
    """Cut one (C, P, P) patch per cell, centred on its centre pixel, zero outside ``image``.

    Parameters
    ----------
    image : (c, y, x) window (any dtype; the patches have it).
    labels : (y, x) label window, for masking.
    cell_ids : (n,) id of each patch's cell.
    centres : (n, 2) integer (row, col) of each centre in window coordinates; the patch covers rows
        ``[r - P // 2, r - P // 2 + P)``.
    patch_size : P.
    mask_neighbours : zero the pixels of other cells.
    mask_background : zero background pixels (label 0) farther than ``background_margin_px`` from the cell.

    Returns
    -------
    (n, c, P, P) array.

    Example
    -------
    >>> img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    >>> cut_patches(img, np.zeros((4, 4), int), np.array([1]), np.array([[0, 0]]), 2)[0, 0].tolist()
    [[0, 0], [0, 0]]
    """
    c, h, w = image.shape
    p = int(patch_size)
    n = len(cell_ids)
    half = p // 2
    padded = np.pad(image, ((0, 0), (p, p), (p, p)))
    padded_labels = np.pad(labels, p)
    rows = (np.asarray(centres[:, 0], np.int64) - half + p)[:, None] + np.arange(p)[None, :]  # (n, P)
    cols = (np.asarray(centres[:, 1], np.int64) - half + p)[:, None] + np.arange(p)[None, :]
    if n and (rows.min() < 0 or cols.min() < 0 or rows.max() >= h + 2 * p or cols.max() >= w + 2 * p):
        raise ValueError("a patch centre lies more than a patch outside the window")
    patches = padded[:, rows[:, :, None], cols[:, None, :]]  # (c, n, P, P)
    patches = np.moveaxis(patches, 0, 1)
    if n and (mask_neighbours or mask_background):
        lab = padded_labels[rows[:, :, None], cols[:, None, :]]  # (n, P, P)
        own = lab == np.asarray(cell_ids).reshape(n, 1, 1)
        drop = np.zeros(lab.shape, bool)
        if mask_neighbours:
            drop |= (lab != 0) & ~own
        if mask_background:
            near = own
            if background_margin_px > 0:
                near = ndimage.binary_dilation(own, structure=np.ones((1, 3, 3), bool),
                                               iterations=int(background_margin_px))
            drop |= (lab == 0) & ~near
        patches = np.where(drop[:, None], np.zeros((), patches.dtype), patches)
    return np.ascontiguousarray(patches)


# --- the slide ---------------------------------------------------------------------------------------------


def nucleus_threshold(labels: zarr.Array, preprocessed: zarr.Array, channel: int, tile_size: int,
                      sample_tiles: int) -> float:
    """Otsu threshold ([0, 1] units) of the nucleus channel over labelled pixels of up to ``sample_tiles``
    evenly spread tiles: inside cells it separates nuclei from cytoplasm. NaN when no tile has cells."""
    shape = labels.shape
    tiles = list(io.iter_tiles(shape, tile_size))
    picks = np.unique(np.linspace(0, len(tiles) - 1, min(int(sample_tiles), len(tiles))).round().astype(int))
    values = []
    for i in picks:
        t = tiles[i]
        lab = np.asarray(labels[t.y0 : t.y1, t.x0 : t.x1])
        sel = lab != 0
        if not sel.any():
            continue
        v = to_unit(np.asarray(preprocessed[channel, t.y0 : t.y1, t.x0 : t.x1]))[sel]
        values.append(v[:: max(1, v.size // _PIXELS_PER_OTSU_TILE)])
    if not values:
        return float("nan")
    v = np.concatenate(values)
    if v.min() == v.max():
        return float("nan")
    return float(threshold_otsu(v))


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


class WindowReader:
    """Read (y, x) windows of a 2-D or (c, y, x) zarr array through a cache of decoded chunks.

    Halo windows of neighbouring tiles overlap: with a 512 px chunk and a 65 px halo each window touches
    3 x 3 chunks, so reading windows straight from zarr decodes every chunk 9 times. Windows visited in
    row-major order reuse the chunks kept here, which cuts that to 3 (once per tile row whose window
    reaches the chunk). Only the chunks the current window meets are kept, so the cache never holds
    more than one window's chunks (3 x 3 positions), whatever the slide's size. Keeping the chunks at the
    end of a tile row for the next row as well would save 4 decodes per row but held 4 more chunk
    positions: on a 3072² px slide peak RSS 348 MB instead of 305-309 MB (bench/suite.py, memory part).
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk_y, self.chunk_x = int(array.chunks[-2]), int(array.chunks[-1])
        self.height, self.width = int(array.shape[-2]), int(array.shape[-1])
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return ``array[..., y0:y1, x0:x1]`` as a numpy array."""
        for key in [k for k in self.cache if not self._meets(k, y0, y1, x0, x1)]:
            del self.cache[key]
        out = np.empty((*self.array.shape[:-2], y1 - y0, x1 - x0), self.array.dtype)
        for cy in range(y0 // self.chunk_y, (y1 - 1) // self.chunk_y + 1):
            for cx in range(x0 // self.chunk_x, (x1 - 1) // self.chunk_x + 1):
                block = self.cache.get((cy, cx))
                cy0, cx0 = cy * self.chunk_y, cx * self.chunk_x
                if block is None:
                    block = np.asarray(self.array[..., cy0 : min(cy0 + self.chunk_y, self.height),
                                                  cx0 : min(cx0 + self.chunk_x, self.width)])
                    self.cache[(cy, cx)] = block
                ya, yb = max(y0, cy0), min(y1, cy0 + block.shape[-2])
                xa, xb = max(x0, cx0), min(x1, cx0 + block.shape[-1])
                out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = block[..., ya - cy0 : yb - cy0, xa - cx0 : xb - cx0]
        return out

    def _meets(self, key: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> bool:
        """Whether chunk ``key`` = (chunk row, chunk column) overlaps the window [y0, y1) x [x0, x1)."""
        cy, cx = key
        return (cy * self.chunk_y < y1 and (cy + 1) * self.chunk_y > y0
                and cx * self.chunk_x < x1 and (cx + 1) * self.chunk_x > x0)


def _owned_cells(lab: np.ndarray, window, tile: io.Tile):
    """Ids of the cells whose centroid lies in the tile, and whether one of them touches an inner window
    edge (then the window was too small)."""
    wy0, wy1, wx0, wx1, slide_h, slide_w = window
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return np.empty(0, np.int64), False
    ids, inverse = np.unique(flat[nz], return_inverse=True)
    rows, cols = np.divmod(nz, lab.shape[1])
    area = np.bincount(inverse)
    # integer sums: every window computes the same floor(centroid), so ownership is exact
    cy = (np.bincount(inverse, weights=rows).astype(np.int64) + wy0 * area) // area
    cx = (np.bincount(inverse, weights=cols).astype(np.int64) + wx0 * area) // area
    owned = (cy >= tile.y0) & (cy < tile.y1) & (cx >= tile.x0) & (cx < tile.x1)
    owned_ids = ids[owned].astype(np.int64)
    edges = []
    if wy0 > 0:
        edges.append(lab[0])
    if wy1 < slide_h:
        edges.append(lab[-1])
    if wx0 > 0:
        edges.append(lab[:, 0])
    if wx1 < slide_w:
        edges.append(lab[:, -1])
    truncated = False
    if edges and owned_ids.size:
        on_edge = np.unique(np.concatenate(edges))
        truncated = bool(np.isin(owned_ids, on_edge).any())
    return owned_ids, truncated


def required_halo(cfg: Mapping, distance_px: float) -> int:
    """Halo (pixels) around a tile that holds every owned cell, its patch, its Laplacian and its
    adjacency (see the module docstring)."""
    return int(max(int(cfg["max_cell_diameter_px"]) + 1, int(cfg["patch_size"]) // 2 + 1,
                   math.ceil(distance_px / 2) + 2))


def _iter_tile_results(labels, raw, pre, cfg, threshold, nucleus_index, distance_px, say):
    """Yield per tile: (tile index, measured columns, patches, adjacency pairs)."""
    lab_arr = labels.array
    lab_reader, raw_reader, pre_reader = (WindowReader(a.array) for a in (labels, raw, pre))
    slide_h, slide_w = (int(s) for s in lab_arr.shape)
    tile_size = int(lab_arr.chunks[-1])
    base_halo = required_halo(cfg, distance_px)
    names = list(raw.channel_names)
    p = int(cfg["patch_size"])
    tiles = list(io.iter_tiles((slide_h, slide_w), tile_size))
    n_cols = math.ceil(slide_w / tile_size)
    report_every = max(1, math.ceil(len(tiles) / 10))
    for done, tile in enumerate(tiles, start=1):
        halo = base_halo
        while True:
            wy0, wy1, wx0, wx1 = io.halo_window(tile, halo, (slide_h, slide_w))
            lab = lab_reader.read(wy0, wy1, wx0, wx1)
            owned, truncated = _owned_cells(lab, (wy0, wy1, wx0, wx1, slide_h, slide_w), tile)
            if not truncated:
                break
            say(f"WARNING tile {tile.row},{tile.col}: a cell is larger than max_cell_diameter_px="
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
        if done % report_every == 0 or done == len(tiles):
            say(f"{done}/{len(tiles)} tiles")
        yield tile.row * n_cols + tile.col, cols, patches, pairs


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
) -> dict:
    """Extract one slide's cells table, patches and clusters, tile by tile (see the module docstring).

    Parameters
    ----------
    labels_path : ``labels.zarr`` (y, x) with slide-unique ids.
    image_path : ``image.zarr`` (c, y, x) raw.
    preprocessed_path : ``preprocessed.zarr`` (c, y, x) in [0, 1].
    cells_path, patches_path, clusters_path : outputs (written atomically).
    extract_cfg : the ``extract`` config section (:data:`DEFAULT_EXTRACT` fills what is missing).
    gating_cfg : the ``gating`` section (:mod:`hemoprofile.gating`); ``enabled: false`` skips gating.
    slide : slide name (default: the folder holding ``cells_path``).
    progress : receives progress lines (None: silent).

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
                        labels, raw, pre, cfg, threshold, nucleus_index, distance_px, say):
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
                source = pq.ParquetFile(pass1_path)
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


def extract_reference(
    labels: np.ndarray,
    raw: np.ndarray,
    preprocessed: np.ndarray,
    channel_names: Sequence[str],
    *,
    patch_size: int = 32,
    patch_dtype: str = "uint8",
    nucleus_channel: str | None = "DAPI",
    nucleus_threshold: float | None = None,
    pixel_size_um: float | None = None,
    mask_neighbours: bool = False,
    mask_background: bool = False,
    background_margin_px: int = 2,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole-image (non-tiled) extraction of all cells in memory, ordered by cell id: the reference the
    streaming :func:`extract_slide` is tested against. For small images only.

    Returns
    -------
    (columns as :func:`measure_cells` returns them, patches (N, C, P, P)).
    """
    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids != 0].astype(np.int64)
    pre = to_unit(preprocessed)
    ci = list(channel_names).index(nucleus_channel) if nucleus_channel in list(channel_names) else None
    cols = measure_cells(lab, np.asarray(raw), pre, ids, channel_names=channel_names,
                         nucleus_channel=ci, nucleus_threshold=nucleus_threshold, pixel_size_um=pixel_size_um)
    centres = np.stack([np.floor(cols["y"] + 0.5), np.floor(cols["x"] + 0.5)], axis=1).astype(np.int64)
    patches = cut_patches(to_patch_dtype(pre, patch_dtype), lab, ids, centres, patch_size,
                          mask_neighbours=mask_neighbours, mask_background=mask_background,
                          background_margin_px=background_margin_px)
    return cols, patches
