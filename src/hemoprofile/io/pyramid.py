"""Multiscale pyramids of OME-Zarr images and label images, built chunk by chunk in bounded memory.

A whole HDSCA slide is 96k x 33k px; a viewer (napari, any OME-Zarr viewer) needs coarser levels to
show it. :func:`write_pyramid` adds levels ``1``, ``2``, ... to an image written by
:mod:`hemoprofile.io.ome_zarr`, each half the size of the one before (rounded up), until the long
side is at most ``smallest`` px, and lists them in the NGFF ``multiscales`` metadata::

    image.zarr/
        0/     full resolution (written by the stage, never touched here)
        1/     2x downsampled: the mean of each 2 x 2 block (images) or its top-left pixel (labels)
        2/     4x ...

Level ``k + 1`` is built from level ``k`` one output chunk at a time: the four source chunks under it
are read, reduced and written, so memory is a few chunks whatever the slide's size. Images use the
mean (rounded half up for integer types, so a uint16 level stays uint16); label images take every
second pixel (nearest neighbour), which keeps ids exact and needs no vote (a mode would invent
nothing better at 2x and costs far more). Every level has the chunk shape of level 0.

Readers that want full resolution keep using level ``0`` (:func:`hemoprofile.io.open_ome_zarr`); the
levels are for viewers and overviews (:func:`pyramid_levels`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import zarr

from hemoprofile.io.tiles import Tile

#: Default size of the smallest level: halve until the long side is at most this many pixels.
DEFAULT_SMALLEST = 2048


def pyramid_shapes(shape_yx: Sequence[int], smallest: int = DEFAULT_SMALLEST) -> list[tuple[int, int]]:
    """The (y, x) shape of every level: level 0 as given, then halved (rounded up) while the long side
    of the last level is larger than ``smallest``.

    Example
    -------
    >>> pyramid_shapes((33000, 96000))[-1], len(pyramid_shapes((33000, 96000)))
    ((516, 1500), 7)
    >>> pyramid_shapes((1000, 1000))
    [(1000, 1000)]
    """
    smallest = int(smallest)
    if smallest < 1:
        raise ValueError(f"smallest level size must be positive, got {smallest}")
    shapes = [(int(shape_yx[0]), int(shape_yx[1]))]
    while max(shapes[-1]) > smallest:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Halve the last two axes with the mean of each 2 x 2 block; a block cut by an odd edge is the mean
    of the pixels it has. Integer types stay integer (rounded half up, exact: no overflow, no float);
    floats keep their type.

    Example
    -------
    >>> downsample_mean(np.array([[1, 2, 9], [3, 4, 9]], np.uint8)).tolist()
    [[3, 9]]
    """
    block = np.asarray(block)
    h, w = block.shape[-2:]
    if h % 2 or w % 2:  # repeat the last row/column: the mean over the pixels the edge block has
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
    quads = (block[..., 0::2, 0::2], block[..., 1::2, 0::2], block[..., 0::2, 1::2], block[..., 1::2, 1::2])
    if np.issubdtype(block.dtype, np.integer):
        # a = 4q + r with r in 0..3 (floor division, also for negatives), so the rounded mean of four values
        # is sum(q) + (sum(r) + 2) // 4, computed in the block's own type without overflow
        q = sum(x >> 2 for x in quads)
        r = sum(x & 3 for x in quads)
        return (q + ((r + 2) >> 2)).astype(block.dtype, copy=False)
    if np.issubdtype(block.dtype, np.floating):
        return (sum(x.astype(np.float64) for x in quads) / 4).astype(block.dtype)
    raise ValueError(f"cannot mean-downsample pixels of type {block.dtype}")


def downsample_nearest(block: np.ndarray) -> np.ndarray:
    """Halve the last two axes by keeping every second pixel (labels: ids stay exact).

    Example
    -------
    >>> downsample_nearest(np.array([[1, 2, 3], [4, 5, 6]])).tolist()
    [[1, 3]]
    """
    return np.ascontiguousarray(np.asarray(block)[..., ::2, ::2])


def write_pyramid(
    path: str | os.PathLike,
    smallest: int = DEFAULT_SMALLEST,
    method: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[tuple[int, ...]]:
    """Add (or rebuild) the coarser levels of an OME-Zarr image or label image, in place.

    Level ``0`` is read, never written. Existing levels ``1``, ``2``, ... are replaced; the group's
    ``multiscales`` lists every level with its scale (level k: 2^k times level 0's scale, as the
    arrays' shapes are ceil(shape / 2^k)). The ``multiscales`` ``type`` records the method.

    Parameters
    ----------
    path : the OME-Zarr group (``image.zarr``, ``labels.zarr``), opened read-write.
    smallest : halve until the long side is at most this many pixels (see :func:`pyramid_shapes`);
        an image already that small keeps its single level.
    method : ``"mean"`` (images) or ``"nearest"`` (labels); by default ``"nearest"`` for a group with
        ``image-label`` metadata, ``"mean"`` otherwise.
    progress : receives one line per level written.

    Returns
    -------
    list of every level's array shape, level 0 first.

    Example
    -------
    >>> write_pyramid("results/S1/image.zarr", smallest=2048)  # doctest: +SKIP
    [(4, 33000, 96000), (4, 16500, 48000), ..., (4, 516, 1500)]
    """
    root = zarr.open_group(str(path), mode="r+")
    ome = root.attrs.get("ome")
    if not ome or "multiscales" not in ome or "0" not in root:
        raise ValueError(f"{path}: not an OME-Zarr image (no 'multiscales' metadata or no level 0 array)")
    if method is None:
        method = "nearest" if "image-label" in ome else "mean"
    reduce = {"mean": downsample_mean, "nearest": downsample_nearest}.get(method)
    if reduce is None:
        raise ValueError(f"pyramid method must be 'mean' or 'nearest', got {method!r}")
    full = root["0"]
    multiscale = ome["multiscales"][0]
    for old in multiscale["datasets"][1:]:
        if old["path"] in root:
            del root[old["path"]]
    lead = full.shape[:-2]
    shapes = pyramid_shapes(full.shape[-2:], smallest)
    base_scale = list(multiscale["datasets"][0]["coordinateTransformations"][0]["scale"])
    datasets = [multiscale["datasets"][0]]
    source = full
    for level, shape_yx in enumerate(shapes[1:], start=1):
        target = root.create_array(
            str(level),
            shape=(*lead, *shape_yx),
            chunks=full.chunks,
            dtype=full.dtype,
            compressors=full.compressors,
            fill_value=full.fill_value,
            dimension_names=full.metadata.dimension_names,
        )
        _halve_into(source, target, reduce)
        factor = 2**level
        scale = base_scale[: len(lead)] + [s * factor for s in base_scale[len(lead):]]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        if progress:
            progress(f"pyramid {path}: level {level} {target.shape}")
        source = target
    multiscale = {**multiscale, "datasets": datasets}
    if len(datasets) > 1:
        multiscale["type"] = method
    else:
        multiscale.pop("type", None)
    root.attrs["ome"] = {**ome, "multiscales": [multiscale, *ome["multiscales"][1:]]}
    return [tuple(root[d["path"]].shape) for d in datasets]


def _halve_into(source, target, reduce) -> None:
    """Write ``target`` (half of ``source`` in y and x) one chunk at a time, one leading index (channel) at
    a time: each step reads the <= 2 x 2 source chunks under one target chunk."""
    src_h, src_w = source.shape[-2:]
    for lead in np.ndindex(*source.shape[:-2]):
        for t in _chunk_windows(target):
            block = np.asarray(source[(*lead, slice(2 * t.y0, min(2 * t.y1, src_h)),
                                       slice(2 * t.x0, min(2 * t.x1, src_w)))])
            target[(*lead, slice(t.y0, t.y1), slice(t.x0, t.x1))] = reduce(block)


def _chunk_windows(array):
    """The (y, x) windows of an array's chunks, row-major."""
    (h, w), (cy, cx) = array.shape[-2:], array.chunks[-2:]
    for row, y0 in enumerate(range(0, h, cy)):
        for col, x0 in enumerate(range(0, w, cx)):
            yield Tile(row, col, y0, min(y0 + cy, h), x0, min(x0 + cx, w))


def pyramid_levels(path: str | os.PathLike) -> list[zarr.Array]:
    """Every resolution level of an OME-Zarr image, level 0 first, in ``multiscales`` order (read only).

    Example
    -------
    >>> [a.shape for a in pyramid_levels("results/S1/labels.zarr")]  # doctest: +SKIP
    [(33000, 96000), (16500, 48000), ...]
    """
    root = zarr.open_group(str(path), mode="r")
    ome = root.attrs.get("ome") or {}
    if "multiscales" not in ome:
        raise ValueError(f"{path}: zarr group has no OME-NGFF 'multiscales' metadata")
    levels = []
    for d in ome["multiscales"][0]["datasets"]:
        if d["path"] not in root:
            raise ValueError(f"{path}: multiscales lists level {d['path']!r}, which is missing")
        levels.append(root[d["path"]])
    return levels
