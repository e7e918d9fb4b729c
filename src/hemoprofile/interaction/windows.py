"""Image windows and their cell–cell contact counts: where windows go (:func:`window_origins`), how many
cells touch inside one (:func:`window_contacts`), a slide's contacts overall (:func:`slide_contacts`),
and the pixels a regressor sees (:func:`downsample_window`).

Definitions (used for the ground truth and for the segmentation alike):

* A cell is *in* a window when its centroid is (``y0 <= y < y0 + size``, same for x); a cell whose body
  crosses the window's edge still counts with all its contacts, because the labels are read with a halo.
* Two cells are in *contact* when their labels touch: some pixel of one is 8-adjacent to a pixel of the
  other, i.e. a 1-pixel dilation of one overlaps the other (:func:`touching_pairs`; the same adjacency
  the extract stage clusters touching cells with, which this stage cannot import: stages import only
  the shared layers).
* A window's *contacts* are the touching pairs whose two cells are both in it; its *CTC–leukocyte
  contacts* the pairs of one CTC and one other cell.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

#: Window kinds: centred on a touching-cell cluster of the segmentation, or placed at random.
KINDS = ("cluster", "random")


def slide_rng(seed: int, slide: str) -> np.random.Generator:
    """A generator seeded by the run's seed and the slide's name (stable across runs and cohorts)."""
    return np.random.default_rng([int(seed), zlib.crc32(str(slide).encode())])


def window_origins(height: int, width: int, size: int, cluster_centres: np.ndarray, n_cluster: int,
                   n_random: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Top-left corners of a slide's windows: up to ``n_cluster`` centred on cluster centres (a seeded
    subset when there are more), then ``n_random`` uniform ones; every window lies inside the image.

    Parameters
    ----------
    height, width : the image's size (px); ``size`` must not exceed either.
    size : the window's side (px).
    cluster_centres : (n, 2) cluster centroids (y, x), px (clusters.parquet ``y``, ``x``).
    n_cluster, n_random : how many of each kind.
    rng : the slide's generator (:func:`slide_rng`).

    Returns
    -------
    (origins, kinds): (m, 2) int64 (y0, x0) and each window's kind (:data:`KINDS`).

    Example
    -------
    >>> o, k = window_origins(100, 100, 20, np.array([[5.0, 50.0]]), 4, 1, np.random.default_rng(0))
    >>> o[0].tolist(), k
    ([0, 40], ['cluster', 'random'])
    """
    if size > height or size > width:
        raise ValueError(f"window size {size} px exceeds the image ({height} x {width} px)")
    centres = np.asarray(cluster_centres, np.float64).reshape(-1, 2)
    if len(centres) > n_cluster:
        centres = centres[np.sort(rng.choice(len(centres), n_cluster, replace=False))]
    ys = np.clip(np.floor(centres[:, 0]).astype(np.int64) - size // 2, 0, height - size)
    xs = np.clip(np.floor(centres[:, 1]).astype(np.int64) - size // 2, 0, width - size)
    ry = rng.integers(0, height - size + 1, n_random)
    rx = rng.integers(0, width - size + 1, n_random)
    origins = np.concatenate([np.stack([ys, xs], 1), np.stack([ry, rx], 1)]).astype(np.int64).reshape(-1, 2)
    return origins, ["cluster"] * len(ys) + ["random"] * int(n_random)


def cells_in_window(ids: np.ndarray, y: np.ndarray, x: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """The ids whose centroid lies in the window [y0, y0 + size) x [x0, x0 + size)."""
    inside = (y >= y0) & (y < y0 + size) & (x >= x0) & (x < x0 + size)
    return np.asarray(ids)[inside]


#: Offsets to half of the 8-neighbourhood (right, down, down-right, down-left): every unordered pair of
#: neighbouring pixels is met once.
_HALF_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique pairs (a < b) of different non-zero labels with 8-adjacent pixels, as (n, 2) int64, sorted.

    Example
    -------
    >>> touching_pairs(np.array([[1, 2, 0, 3], [0, 0, 3, 0]])).tolist()
    [[1, 2], [2, 3]]
    """
    lab = np.pad(np.asarray(labels), 1)  # a zero border: every offset view has the image's shape
    h, w = lab.shape
    centre = lab[1:-1, 1:-1]
    found = []
    for dy, dx in _HALF_NEIGHBOURS:
        other = lab[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]
        hit = (centre != other) & (centre > 0) & (other > 0)  # masks first: only touching pixels are copied
        found.append(np.sort(np.stack([centre[hit], other[hit]], axis=1), axis=1))
    pairs = np.concatenate(found).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def count_contacts(pairs: np.ndarray, members: np.ndarray, ctc_ids: np.ndarray | None = None) -> tuple[int, float]:
    """Touching pairs among ``members``, and those of one CTC and one other cell (NaN without types).

    Example
    -------
    >>> count_contacts(np.array([[1, 2], [2, 3], [3, 9]]), np.array([1, 2, 3]), np.array([3]))
    (2, 1.0)
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    both = np.isin(pairs[:, 0], members) & np.isin(pairs[:, 1], members)
    inside = pairs[both]
    if ctc_ids is None:
        return int(len(inside)), float("nan")
    ctc = np.isin(inside, np.asarray(ctc_ids, np.int64))
    return int(len(inside)), float(np.sum(ctc[:, 0] != ctc[:, 1]))


def window_contacts(labels_halo: np.ndarray, members: np.ndarray, ctc_ids: np.ndarray | None = None
                    ) -> tuple[int, float]:
    """Contacts (and CTC–leukocyte contacts) of a window's cells.

    Parameters
    ----------
    labels_halo : (y, x) label image of the window with a halo wide enough to hold its cells whole.
    members : ids of the cells in the window (:func:`cells_in_window`).
    ctc_ids : ids of the CTCs (None: the CTC–leukocyte count is NaN).

    Example
    -------
    >>> lab = np.array([[1, 1, 2, 0, 3],
    ...                 [1, 1, 2, 0, 3]])
    >>> window_contacts(lab, np.array([1, 2, 3]), np.array([2]))
    (1, 1.0)
    """
    return count_contacts(touching_pairs(labels_halo), members, ctc_ids)


def slide_contacts(labels, block: int = 1024) -> np.ndarray:
    """Every touching pair of a whole label image, read in ``block`` x ``block`` tiles that overlap their
    neighbours by one pixel (a pair across a tile edge is seen by a tile holding both pixels; a pair seen
    twice is kept once), so memory is a tile plus the pairs.

    Parameters
    ----------
    labels : (y, x) array or zarr array of labels.

    Returns
    -------
    (n, 2) int64 unique pairs, ``a < b``.

    Example
    -------
    >>> lab = np.zeros((6, 6), int); lab[:, 2] = 1; lab[:, 3] = 2; lab[5, 4] = 3
    >>> slide_contacts(lab, block=4).tolist()
    [[1, 2], [2, 3]]
    """
    h, w = int(labels.shape[0]), int(labels.shape[1])
    found = [touching_pairs(np.asarray(labels[y0:min(y0 + block + 1, h), max(x0 - 1, 0):min(x0 + block + 1, w)]))
             for y0 in range(0, h, block) for x0 in range(0, w, block)]
    pairs = np.concatenate(found) if found else np.empty((0, 2), np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def downsample_window(unit: np.ndarray, out_size: int) -> np.ndarray:
    """Block-mean a (c, s, s) window of [0, 1] values to (c, out_size, out_size); ``s`` must be a multiple of
    ``out_size`` (block means keep every pixel's weight: small cells do not vanish as with striding).

    Example
    -------
    >>> downsample_window(np.arange(16.0).reshape(1, 4, 4), 2)[0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    c, s, s2 = unit.shape
    if s != s2 or s % out_size:
        raise ValueError(f"window of {s} x {s2} px cannot be block-averaged to {out_size} px (needs a multiple)")
    f = s // out_size
    return unit.reshape(c, out_size, f, out_size, f).mean(axis=(2, 4))


def window_table_columns(latent_dim: int) -> list[str]:
    """The columns of ``windows.parquet`` (see :mod:`hemoprofile.interaction.slide`)."""
    base = ["slide", "window", "kind", "y0", "x0", "size", "target_source", "n_cells", "contacts",
            "ctc_leukocyte_contacts", "seg_n_cells", "seg_contacts", "seg_ctc_leukocyte_contacts"]
    return base + [f"zwin_{i}" for i in range(latent_dim)] + [f"zcell_{i}" for i in range(latent_dim)]


def centroid_lookup(table: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, y, x) arrays of a cells or truth table (columns ``cell_id``, ``y``, ``x``)."""
    return (np.asarray(table["cell_id"], np.int64), np.asarray(table["y"], np.float64),
            np.asarray(table["x"], np.float64))
