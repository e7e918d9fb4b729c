"""Reading a slide tile by tile with a halo: the halo each tile needs (:func:`required_halo`), a window
reader with a cache of decoded chunks (:class:`WindowReader`) and the cells a tile owns
(:func:`owned_cells`, by centroid)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import zarr

from hemoprofile import io


def required_halo(cfg: Mapping, distance_px: float) -> int:
    """Halo (pixels) around a tile that holds every owned cell, its patch, its Laplacian and its
    adjacency (see :mod:`hemoprofile.features.extract`)."""
    return int(max(int(cfg["max_cell_diameter_px"]) + 1, int(cfg["patch_size"]) // 2 + 1,
                   math.ceil(distance_px / 2) + 2))


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


def owned_cells(lab: np.ndarray, window, tile: io.Tile):
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
