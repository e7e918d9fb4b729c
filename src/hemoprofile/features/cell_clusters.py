"""Touching-cell clusters: groups of two or more cells that touch (or lie within a distance of each other).

Not to be confused with the clusters of the embed stage, which group cells by their latent features.

Clusters are found from label adjacency, streamed tile by tile:

1. :func:`adjacent_pairs` lists the pairs of different labels that are 8-adjacent in a label window,
   counting only pixel pairs whose *anchor* pixel (the upper / left one of the two) lies in the tile's
   core. Every pair of neighbouring pixels of a slide has exactly one anchor, so each adjacency is seen
   by exactly one tile; a halo of one pixel (plus ``distance_px / 2`` when growing) is all it needs.
2. With a distance ``d`` > 0 the labels are first grown by ``d / 2`` pixels into the background
   (:func:`skimage.segmentation.expand_labels`, nearest label wins), so two cells whose gap is at most
   about ``d`` pixels touch after growing. This is the usual approximation of "within distance d"
   (exact for two cells; where three cells compete for the same background the nearest one wins).
3. :class:`ClusterAccumulator` collects the pairs of all tiles (memory: 16 bytes per adjacent pair, a
   few MB for a slide of millions of cells — never a per-cell row) and :meth:`ClusterAccumulator.resolve`
   joins them into connected components (union-find over pairs, done by
   :func:`scipy.sparse.csgraph.connected_components`).

Cluster ids are numbered 0, 1, ... in the order of each cluster's smallest member cell id, so they do
not depend on the tiling.

``clusters.parquet`` schema (see :data:`CLUSTER_SCHEMA`): ``slide`` (string), ``cluster_id`` (int64),
``cell_ids`` (list<int64>, ascending), ``size`` (int32, members), ``bbox_y0, bbox_x0, bbox_y1, bbox_x1``
(int32, px, half-open union of the members' boxes), ``y``, ``x`` (float64, px, area-weighted centroid of
the members), ``y_um``, ``x_um`` (float64, µm; null when the pixel size is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from scipy import sparse
from scipy.sparse import csgraph
from skimage.segmentation import expand_labels

CLUSTER_SCHEMA = pa.schema([
    ("slide", pa.string()),
    ("cluster_id", pa.int64()),
    ("cell_ids", pa.list_(pa.int64())),
    ("size", pa.int32()),
    ("bbox_y0", pa.int32()),
    ("bbox_x0", pa.int32()),
    ("bbox_y1", pa.int32()),
    ("bbox_x1", pa.int32()),
    ("y", pa.float64()),
    ("x", pa.float64()),
    ("y_um", pa.float64()),
    ("x_um", pa.float64()),
])

# Half of the 8-neighbourhood: each unordered pair of neighbouring pixels appears once, anchored at the
# pixel it is listed from (right, down, down-right, down-left).
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def adjacent_pairs(
    labels: np.ndarray,
    distance_px: float = 0.0,
    core: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Return the unique pairs of different labels that are 8-adjacent (after growing by
    ``distance_px / 2``), as an (n, 2) int64 array with ``a < b`` in each row, sorted.

    Parameters
    ----------
    labels : (y, x) integer label image or window, 0 = background.
    distance_px : cells whose gap is up to about this many pixels count as adjacent (0: touching only).
    core : (row slice, column slice) of ``labels``; only pixel pairs anchored in it are counted (for
        tiles: the tile's core inside its halo window). Default: the whole array.

    Example
    -------
    >>> lab = np.array([[1, 2, 0, 3]])
    >>> adjacent_pairs(lab).tolist()
    [[1, 2]]
    >>> adjacent_pairs(lab, distance_px=2).tolist()
    [[1, 2], [2, 3]]
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"adjacent_pairs needs a 2-D label image, got shape {lab.shape}")
    if distance_px > 0:
        lab = expand_labels(lab, distance=float(distance_px) / 2.0)
    h, w = lab.shape
    ry = range(h)[core[0]] if core else range(h)
    rx = range(w)[core[1]] if core else range(w)
    found = []
    for dy, dx in _HALF_NEIGHBOURHOOD:
        # anchors: core pixels whose neighbour at (dy, dx) lies inside the array
        y0, y1 = ry.start, min(ry.stop, h - dy)
        x0, x1 = max(rx.start, -dx), min(rx.stop, w - dx)
        if y1 <= y0 or x1 <= x0:
            continue
        a = lab[y0:y1, x0:x1]
        b = lab[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        hit = (a != b) & (a != 0) & (b != 0)
        if hit.any():
            av, bv = a[hit].astype(np.int64), b[hit].astype(np.int64)
            found.append(np.stack([np.minimum(av, bv), np.maximum(av, bv)], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


class ClusterAccumulator:
    """Collect adjacency pairs tile by tile, then resolve them into clusters.

    Example
    -------
    >>> acc = ClusterAccumulator()
    >>> acc.add(np.array([[1, 2]])); acc.add(np.array([[2, 5], [7, 9]]))
    >>> ids, clusters = acc.resolve()
    >>> ids.tolist(), clusters.tolist()
    ([1, 2, 5, 7, 9], [0, 0, 0, 1, 1])
    """

    def __init__(self) -> None:
        self._pairs: list[np.ndarray] = []
        self._n = 0

    def add(self, pairs: np.ndarray) -> None:
        """Add an (n, 2) array of adjacent cell ids (duplicates are harmless)."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if len(pairs):
            self._pairs.append(pairs)
            self._n += len(pairs)
            if len(self._pairs) > 64:  # keep the list short and drop duplicates now and then
                self._pairs = [np.unique(np.concatenate(self._pairs), axis=0)]

    @property
    def n_pairs(self) -> int:
        return sum(len(p) for p in self._pairs)

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(cell_ids, cluster_ids)``: the ascending ids of all cells in a cluster and each one's
        cluster id (clusters numbered 0.. in the order of their smallest member)."""
        if not self._pairs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pairs = np.unique(np.concatenate(self._pairs), axis=0)
        nodes, inverse = np.unique(pairs, return_inverse=True)
        inverse = inverse.reshape(-1, 2)
        n = len(nodes)
        graph = sparse.coo_matrix((np.ones(len(pairs), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(n, n))
        _, component = csgraph.connected_components(graph, directed=False)
        # renumber components by their smallest member (nodes ascend, so first occurrence = smallest)
        _, first = np.unique(component, return_index=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return nodes, rank[component].astype(np.int64)


def lookup_cluster_ids(cell_ids: np.ndarray, clustered_ids: np.ndarray, cluster_ids: np.ndarray) -> np.ndarray:
    """Return each of ``cell_ids``' cluster id, -1 for cells in no cluster.

    ``clustered_ids`` must ascend (as :meth:`ClusterAccumulator.resolve` returns them).
    """
    cell_ids = np.asarray(cell_ids, np.int64)
    out = np.full(cell_ids.shape, -1, np.int64)
    if len(clustered_ids) == 0 or len(cell_ids) == 0:
        return out
    pos = np.searchsorted(clustered_ids, cell_ids)
    pos_clipped = np.minimum(pos, len(clustered_ids) - 1)
    hit = clustered_ids[pos_clipped] == cell_ids
    out[hit] = cluster_ids[pos_clipped[hit]]
    return out


class ClusterGeometry:
    """Accumulate each cluster's bounding box and area-weighted centroid from cell rows, chunk by chunk.

    Memory: a few numbers per cluster.
    """

    def __init__(self, n_clusters: int) -> None:
        big = np.iinfo(np.int32).max
        self.y0 = np.full(n_clusters, big, np.int64)
        self.x0 = np.full(n_clusters, big, np.int64)
        self.y1 = np.full(n_clusters, -1, np.int64)
        self.x1 = np.full(n_clusters, -1, np.int64)
        self.area = np.zeros(n_clusters, np.float64)
        self.sum_y = np.zeros(n_clusters, np.float64)
        self.sum_x = np.zeros(n_clusters, np.float64)

    def add(self, cluster_id, bbox_y0, bbox_x0, bbox_y1, bbox_x1, area, y, x) -> None:
        """Add cell rows (arrays); rows with cluster_id -1 are ignored."""
        cluster_id = np.asarray(cluster_id)
        keep = cluster_id >= 0
        if not keep.any():
            return
        c = cluster_id[keep]
        np.minimum.at(self.y0, c, np.asarray(bbox_y0)[keep])
        np.minimum.at(self.x0, c, np.asarray(bbox_x0)[keep])
        np.maximum.at(self.y1, c, np.asarray(bbox_y1)[keep])
        np.maximum.at(self.x1, c, np.asarray(bbox_x1)[keep])
        a = np.asarray(area, np.float64)[keep]
        np.add.at(self.area, c, a)
        np.add.at(self.sum_y, c, a * np.asarray(y)[keep])
        np.add.at(self.sum_x, c, a * np.asarray(x)[keep])


def cluster_table(
    slide: str,
    clustered_ids: np.ndarray,
    cluster_ids: np.ndarray,
    geometry: ClusterGeometry | None = None,
    pixel_size_um: float | None = None,
) -> pa.Table:
    """Build the ``clusters.parquet`` table (:data:`CLUSTER_SCHEMA`) from resolved clusters.

    Parameters
    ----------
    slide : slide name.
    clustered_ids, cluster_ids : from :meth:`ClusterAccumulator.resolve`.
    geometry : accumulated boxes and centroids; without it those columns are null.
    pixel_size_um : µm per pixel, for ``y_um`` / ``x_um`` (null when None).
    """
    n = int(cluster_ids.max()) + 1 if len(cluster_ids) else 0
    order = np.lexsort((clustered_ids, cluster_ids))
    members = clustered_ids[order]
    sizes = np.bincount(cluster_ids, minlength=n).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    cell_lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(members, pa.int64()))
    columns = {
        "slide": pa.array([slide] * n, pa.string()),
        "cluster_id": pa.array(np.arange(n, dtype=np.int64)),
        "cell_ids": cell_lists,
        "size": pa.array(sizes),
    }
    if geometry is not None and n:
        y = geometry.sum_y / np.maximum(geometry.area, 1e-12)
        x = geometry.sum_x / np.maximum(geometry.area, 1e-12)
        columns.update(
            bbox_y0=pa.array(geometry.y0.astype(np.int32)), bbox_x0=pa.array(geometry.x0.astype(np.int32)),
            bbox_y1=pa.array(geometry.y1.astype(np.int32)), bbox_x1=pa.array(geometry.x1.astype(np.int32)),
            y=pa.array(y), x=pa.array(x),
        )
        if pixel_size_um:
            columns.update(y_um=pa.array(y * pixel_size_um), x_um=pa.array(x * pixel_size_um))
    for field in CLUSTER_SCHEMA:
        if field.name not in columns:
            columns[field.name] = pa.nulls(n, field.type)
    return pa.table([columns[f.name] for f in CLUSTER_SCHEMA], schema=CLUSTER_SCHEMA)


def clusters_from_labels(labels: np.ndarray, distance_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image reference: ``(cell_ids, cluster_ids)`` of all clustered cells of a label image.

    Example
    -------
    >>> clusters_from_labels(np.array([[1, 2, 0, 3, 3, 0, 4]]))
    (array([1, 2]), array([0, 0]))
    """
    acc = ClusterAccumulator()
    acc.add(adjacent_pairs(labels, distance_px))
    return acc.resolve()


def members_by_cluster(clustered_ids: np.ndarray, cluster_ids: np.ndarray) -> list[Sequence[int]]:
    """Return the member ids of each cluster (a list indexed by cluster id), for tests and reports."""
    n = int(cluster_ids.max()) + 1 if len(cluster_ids) else 0
    out: list[list[int]] = [[] for _ in range(n)]
    for cell, cluster in zip(clustered_ids.tolist(), cluster_ids.tolist()):
        out[cluster].append(cell)
    return out
