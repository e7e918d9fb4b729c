"""Shape measures of many labelled cells at once: perimeters (as ``skimage.measure.perimeter``) and the
areas of the convex hulls of the cells' pixel squares (for solidity)."""

from __future__ import annotations

import math

import numpy as np

# skimage.measure.perimeter's weights, indexed by 1 + 2 x (4-neighbours on the border) + 10 x (diagonal
# neighbours on the border) of a border pixel.
_PERIMETER_WEIGHTS = np.zeros(50, np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def perimeters(comp: np.ndarray, n: int) -> np.ndarray:
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


def convex_areas(idx_s: np.ndarray, ys_s: np.ndarray, xs_s: np.ndarray, n: int) -> np.ndarray:
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
