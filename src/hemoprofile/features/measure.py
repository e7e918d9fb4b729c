"""Per-cell measures of a label window (:func:`measure_cells`: position, box, shape, orientation,
intensities, texture, nucleus) and the slide's nucleus threshold they use (:func:`nucleus_threshold`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr
from scipy import ndimage
from skimage.filters import threshold_otsu

from hemoprofile import io
from hemoprofile.features.morphology import convex_areas, perimeters
from hemoprofile.vocabulary import to_unit

_PIXELS_PER_OTSU_TILE = 100_000  # labelled pixels kept per sampled tile for the nucleus threshold
_MIN_NUCLEUS_PIXELS = 3  # fewer nucleus pixels: the orientation comes from the whole cell's mask


def major_axis_angle(var_y, var_x, cov) -> np.ndarray:
    """Angle in degrees, in (-90, 90], of the major axis of the ellipse with these second central moments.

    Image axes: x = column (rightwards), y = row (downwards); the angle turns from +x towards +y, so
    on screen (origin top left) a positive angle points down-right. A circle gives 0.

    Example
    -------
    >>> major_axis_angle(1.0, 4.0, 0.0).item(), major_axis_angle(4.0, 1.0, 0.0).item()
    (0.0, 90.0)
    >>> round(major_axis_angle(2.0, 2.0, 1.0).item(), 6)
    45.0
    """
    deg = np.degrees(0.5 * np.arctan2(2.0 * np.asarray(cov, np.float64),
                                      np.asarray(var_x, np.float64) - np.asarray(var_y, np.float64)))
    return np.where(deg <= -90.0, deg + 180.0, deg)


def _second_moments(idx, ys, xs, n) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(count, var_y, var_x, cov) per group 0..n-1 of pixels (ys, xs) grouped by ``idx``."""
    count = np.bincount(idx, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1)
    cy = np.bincount(idx, weights=ys, minlength=n) / safe
    cx = np.bincount(idx, weights=xs, minlength=n) / safe
    dy, dx = ys - cy[idx], xs - cx[idx]
    return (count, np.bincount(idx, weights=dy * dy, minlength=n) / safe,
            np.bincount(idx, weights=dx * dx, minlength=n) / safe, np.bincount(idx, weights=dy * dx, minlength=n) / safe)


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
    except slide, tile, cluster_id and the gate label). ``orientation_deg`` is the major axis angle
    (:func:`major_axis_angle`) of the cell's nucleus pixels (those above ``nucleus_threshold``) when it
    has at least three, else of its whole mask.

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
    convex_area = convex_areas(idx_s, ys_s, xs_s, n)

    px = float(pixel_size_um) if pixel_size_um else float("nan")
    y = cy_local + oy
    x = cx_local + ox
    out: dict[str, np.ndarray] = {
        "cell_id": cell_ids,
        "y": y, "x": x, "y_um": y * px, "x_um": x * px,
        "bbox_y0": bbox[:, 0] + oy, "bbox_x0": bbox[:, 1] + ox,
        "bbox_y1": bbox[:, 2] + oy, "bbox_x1": bbox[:, 3] + ox,
        "area": area, "area_um2": area * px * px,
        "perimeter": perimeters(comp, n),
        "eccentricity": eccentricity,
        "solidity": area / np.where(convex_area > 0, convex_area, np.nan),
    }
    angle = major_axis_angle(var_y, var_x, cov)
    if nucleus_channel is not None and nucleus_threshold is not None and np.isfinite(nucleus_threshold):
        nucleus = preprocessed[nucleus_channel][sel] > nucleus_threshold
        nucleus_area = np.bincount(idx[nucleus], minlength=n)
        out["nucleus_area"] = nucleus_area
        out["nucleus_ratio"] = nucleus_area / safe_area
        n_count, n_vy, n_vx, n_cov = _second_moments(idx[nucleus], ys[nucleus], xs[nucleus], n)
        angle = np.where(n_count >= _MIN_NUCLEUS_PIXELS, major_axis_angle(n_vy, n_vx, n_cov), angle)
    else:
        out["nucleus_area"] = np.full(n, np.nan)
        out["nucleus_ratio"] = np.full(n, np.nan)
    out["orientation_deg"] = angle
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
