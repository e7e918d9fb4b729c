"""Cutting per-cell image patches out of a window, with the optional masks of neighbours and
background (the rows of ``patches.zarr``, :mod:`hemoprofile.io.patches`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
