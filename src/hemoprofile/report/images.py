"""The report's pictures of slides: false-colour composites, whole-slide thumbnails (block means, read in
bands of rows), full-resolution detail crops and cell crops, with segmentation outlines drawn in.

A thumbnail needs every chunk of the image it is made from: it uses the coarsest pyramid level of the
OME-Zarr image that is still wide enough. image.zarr and labels.zarr carry pyramids; preprocessed.zarr
does not, so when it is the image shown and is large, the thumbnail comes from image.zarr's pyramid
(percentile stretched) instead of decoding the whole preprocessed slide (minutes for a 3 GP slide), and the
outlines from the labels level whose factor divides the thumbnail's step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hemoprofile import io
from hemoprofile.report.readers import have
from hemoprofile.vocabulary import channel_rgb, to_unit

THUMBNAIL_WIDTH = 256        # px, widest slide thumbnail
DETAIL_SIZE = 128            # px, full-resolution detail crop per slide (where cells are densest)
#: a preprocessed image without pyramid at least this many thumbnail widths wide is shown from image.zarr's
#: pyramid instead (smaller ones, as the demo's, are cheap to decode whole and keep the preprocessed look)
RAW_PYRAMID_FROM = 4
OUTLINE_RGB = (1.0, 0.85, 0.0)        # segmentation outlines (yellow)
CLUSTER_OTHER_RGB = (0.0, 0.9, 0.9)   # outlines of the non-CTC members of a cluster (cyan)


def display_composite(unit: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """False-colour RGB (H, W, 3) for display of a (C, H, W) image in [0, 1]: DAPI blue, CK red, VIM
    green, CD45 grey (the colours of :data:`hemoprofile.vocabulary.CHANNEL_RGB`), other channels grey.

    The channels are not stretched further: preprocessed intensities are already normalised per slide,
    so a CK-negative cell stays dark instead of being stretched into false positives.

    Example
    -------
    >>> display_composite(np.ones((2, 1, 1)), ["DAPI", "CK"])[0, 0].tolist()
    [1.0, 0.0, 1.0]
    """
    x = np.asarray(unit, np.float32)
    out = np.zeros((*x.shape[1:], 3), np.float32)
    for c, name in enumerate(channels):
        out += np.clip(x[c], 0, 1)[..., None] * np.asarray(channel_rgb(name), np.float32)
    return np.clip(out, 0, 1)


def percentile_stretch(x: np.ndarray) -> np.ndarray:
    """Raw intensities -> [0, 1] per channel between the 1st and 99.8th percentile (for display only)."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = np.percentile(x[c], [1.0, 99.8])
        out[c] = np.clip((x[c] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def _open_shown_image(paths: Mapping) -> tuple[io.OmeZarrImage, str, bool]:
    """The image to show for a slide: preprocessed.zarr ([0, 1]) when present, else image.zarr (raw);
    returns the opened image, its path and whether it is preprocessed."""
    if have(paths.get("preprocessed")):
        source, unit = paths["preprocessed"], True
    elif have(paths.get("image")):
        source, unit = paths["image"], False
    else:
        raise FileNotFoundError("neither preprocessed.zarr nor image.zarr exists")
    return io.open_ome_zarr(source), source, unit


def _pyramid_levels(path):
    """Level 0 of an OME-Zarr image and each coarser level listed in its ``multiscales`` (same number of
    axes), as (array, downsampling factor relative to level 0), level 0 first."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    datasets = root.attrs.get("ome", {}).get("multiscales", [{}])[0].get("datasets", [{"path": "0"}])
    full = root["0"]
    levels = [(full, 1)]
    for d in datasets[1:]:
        try:
            level = root[d["path"]]
        except KeyError:
            continue
        if level.ndim == full.ndim and level.shape[-1]:
            levels.append((level, max(1, round(full.shape[-1] / level.shape[-1]))))
    return levels


def _coarsest_level(path, min_width: int):
    """The coarsest resolution level of an OME-Zarr image at least ``min_width`` px wide (level 0 when
    it is the only one), and its downsampling factor relative to level 0.

    image.zarr and labels.zarr have pyramids; level 0 (decoding every chunk of the slide) is used only
    for an image without one (preprocessed.zarr, or images written before the pyramids).
    """
    levels = _pyramid_levels(path)
    best, factor = levels[0]
    for level, level_factor in levels[1:]:
        if min_width <= level.shape[-1] < best.shape[-1]:
            best, factor = level, level_factor
    return best, factor


def _level_dividing(path, step: int):
    """The coarsest resolution level of an OME-Zarr image whose downsampling factor divides ``step`` (level
    0 when none does), and that factor: sampling it every ``step // factor`` px picks (to within a pixel
    of level 0) the objects that sampling level 0 every ``step`` px picks (nearest-neighbour pyramids, as
    labels.zarr's)."""
    levels = _pyramid_levels(path)
    best, best_factor = levels[0]
    for level, factor in levels[1:]:
        if factor > best_factor and step % factor == 0:
            best, best_factor = level, factor
    return best, best_factor


def block_mean_thumbnail(array, step: int) -> np.ndarray:
    """Downsample a (c, y, x) array by ``step`` with block means, reading bands of rows (bounded memory).

    Edge blocks that are cut by the image border are averaged over the pixels they have.

    Example
    -------
    >>> block_mean_thumbnail(np.arange(12, dtype=np.uint16).reshape(1, 3, 4), 2).tolist()
    [[[2.5, 4.5], [8.5, 10.5]]]
    """
    c, h, w = array.shape
    chunk_h = int(getattr(array, "chunks", (1, 512, 512))[1])
    band = step * max(1, round(chunk_h / step))
    xs = np.arange(0, w, step)
    out = np.zeros((c, -(-h // step), len(xs)), np.float32)
    col_counts = np.diff(np.append(xs, w)).astype(np.float64)
    for ci in range(c):
        for y0 in range(0, h, band):
            y1 = min(y0 + band, h)
            block = np.asarray(array[ci, y0:y1, :])
            sums = np.add.reduceat(block, xs, axis=1, dtype=np.float64)
            ys = np.arange(0, y1 - y0, step)
            sums = np.add.reduceat(sums, ys, axis=0)
            row_counts = np.diff(np.append(ys, y1 - y0)).astype(np.float64)
            out[ci, y0 // step: y0 // step + len(ys)] = sums / row_counts[:, None] / col_counts[None, :]
    return out


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """The inner boundary pixels of every labelled object."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner") & (labels > 0)


def paint(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """A copy of ``rgb`` with the ``mask`` pixels set to ``colour``."""
    rgb = rgb.copy()
    rgb[mask] = np.asarray(colour, np.float32)
    return rgb


def slide_images(paths: Mapping, detail_centre: tuple[int, int] | None = None,
                 width: int = THUMBNAIL_WIDTH, detail: int = DETAIL_SIZE) -> dict:
    """The QC images of a slide: a thumbnail at most ``width`` px wide and a ``detail`` px crop at full
    resolution, false colour with segmentation outlines when labels.zarr exists.

    Returns
    -------
    dict: ``thumbnail`` and ``detail`` (H, W, 3 float arrays), ``step`` (downsampling factor),
    ``source`` (path shown), ``outlines`` (bool), ``detail_window`` (y0, y1, x0, x1).
    """
    image, source, unit = _open_shown_image(paths)
    array = image.array
    _, h, w = array.shape
    level, factor = _coarsest_level(source, width)
    thumb_unit, thumb_channels = unit, image.channel_names
    if factor == 1 and unit and level.shape[-1] >= RAW_PYRAMID_FROM * width and have(paths.get("image")):
        raw_level, raw_factor = _coarsest_level(paths["image"], width)
        if raw_factor > 1:  # no pyramid in preprocessed.zarr: the raw image's pyramid, stretched
            level, factor, thumb_unit = raw_level, raw_factor, False
            thumb_channels = io.open_ome_zarr(paths["image"]).channel_names
    step = max(1, math.ceil(level.shape[-1] / width))
    small = block_mean_thumbnail(level, step)
    if thumb_unit:
        small = small / np.float32(np.iinfo(level.dtype).max) if np.issubdtype(level.dtype, np.integer) else small
    else:
        small = percentile_stretch(small)
    thumb = display_composite(small, thumb_channels)
    step *= factor  # in full-resolution pixels from here on
    cy, cx = detail_centre or (h // 2, w // 2)
    y0 = int(min(max(cy - detail // 2, 0), max(h - detail, 0)))
    x0 = int(min(max(cx - detail // 2, 0), max(w - detail, 0)))
    window = (y0, min(y0 + detail, h), x0, min(x0 + detail, w))
    crop = np.asarray(array[:, window[0]:window[1], window[2]:window[3]])
    crop = to_unit(crop) if unit else percentile_stretch(crop)
    zoom = display_composite(crop, image.channel_names)
    outlines = have(paths.get("labels"))
    if outlines:
        labels = io.open_ome_zarr(paths["labels"]).array
        lab_level, lab_factor = _level_dividing(paths["labels"], step)
        lab_step = step // lab_factor
        lab_small = np.asarray(lab_level[(step // 2) // lab_factor::lab_step, (step // 2) // lab_factor::lab_step])
        lab_small = lab_small[: thumb.shape[0], : thumb.shape[1]]
        mask = np.zeros(thumb.shape[:2], bool)
        mask[: lab_small.shape[0], : lab_small.shape[1]] = outline_mask(lab_small)
        thumb = paint(thumb, mask, OUTLINE_RGB)
        zoom = paint(zoom, outline_mask(np.asarray(labels[window[0]:window[1], window[2]:window[3]])), OUTLINE_RGB)
    return {"thumbnail": thumb, "detail": zoom, "step": step, "source": source, "outlines": outlines,
            "detail_window": window}


def slide_crop(paths: Mapping, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """A [0, 1] (C, H, W) crop of the slide's shown image and the labels under it (None without labels)."""
    image, _, unit = _open_shown_image(paths)
    _, h, w = image.array.shape
    y0, y1, x0, x1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    pixels = np.asarray(image.array[:, y0:y1, x0:x1])
    pixels = to_unit(pixels) if unit else percentile_stretch(pixels)
    labels = None
    if have(paths.get("labels")):
        labels = np.asarray(io.open_ome_zarr(paths["labels"]).array[y0:y1, x0:x1])
    return pixels, list(image.channel_names), labels
