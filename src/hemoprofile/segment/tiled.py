"""Tiled segmentation of a slide and stitching of the tiles' labels into one slide-wide label image
(:func:`segment_slide`: preprocessed.zarr -> labels.zarr, the workflow's entry point).

Each tile is segmented in a window grown by a halo of ``overlap_diameters`` x diameter (Cellpose needs
about 2 diameters of context; the classical backend needs less). From a window's objects we keep those
whose centroid lies in the tile's core grown by a margin of half a diameter, so an object on a seam is
seen whole by the tile that keeps it, and at least one of the two tiles keeps it even when their
centroids differ by a pixel. An object that overlaps an already written object (written by an earlier
neighbour) by more than half of either is a duplicate and is dropped; the rest are pasted onto
background only, with ids from a running counter. Since a pasted object keeps at least half of its
pixels, ids are exactly 1..N without a relabelling pass, and an object is never cut or duplicated at a
seam.

Tiles are processed in row-major order; memory holds a few windows and one float per object (areas).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import zarr

from hemoprofile import STAGE_VERSIONS
from hemoprofile.io import (
    Tile,
    atomic_output,
    create_ome_zarr_labels,
    halo_window,
    iter_tiles,
    model_id,
    open_ome_zarr,
    ordered_map,
)
from hemoprofile.io.pyramid import DEFAULT_SMALLEST, write_pyramid
from hemoprofile.segment.cellpose_model import is_model_file, model_file
from hemoprofile.segment.input import select_channels
from hemoprofile.segment.segmenter import build_segmenter
from hemoprofile.segment.settings import segment_settings
from hemoprofile.vocabulary import to_unit

#: Centroid margin around a tile's core, as a fraction of the diameter.
CORE_MARGIN_DIAMETERS = 0.5
#: Overlap (fraction of either object's area) above which a window's object duplicates a written one.
DUPLICATE_OVERLAP = 0.5


def halo_pixels(segment_cfg: Mapping) -> int:
    """Halo (pixels) around each tile: ``overlap_diameters`` x ``diameter``, rounded up."""
    return int(math.ceil(float(segment_cfg["overlap_diameters"]) * float(segment_cfg["diameter"])))


def _read_window(source, indices: Sequence[int], window: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = window
    return np.stack([to_unit(source[c, y0:y1, x0:x1]) for c in indices])


def _sample_tiles(tiles: list[Tile], n: int, seed: int) -> list[Tile]:
    if n >= len(tiles):
        return tiles
    rng = np.random.default_rng(seed)
    return [tiles[i] for i in sorted(rng.choice(len(tiles), size=n, replace=False))]


def _object_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area, centroid row and centroid column of labels 1..max (index 0 = background) via bincount."""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    rows, cols = np.indices(labels.shape)
    area = np.bincount(flat, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=rows.ravel(), minlength=n) / area
        cx = np.bincount(flat, weights=cols.ravel(), minlength=n) / area
    return area, cy, cx


class _Areas:
    """Growable table of written objects' pixel areas, indexed by global id."""

    def __init__(self):
        self.values = np.zeros(1024, np.int64)

    def set(self, ids: np.ndarray, areas: np.ndarray) -> None:
        if ids.size and ids.max() >= self.values.size:
            grown = np.zeros(max(int(ids.max()) + 1, 2 * self.values.size), np.int64)
            grown[: self.values.size] = self.values
            self.values = grown
        self.values[ids] = areas

    def get(self, ids: np.ndarray) -> np.ndarray:
        return self.values[ids]


def paste_tile_labels(
    written: np.ndarray, new: np.ndarray, tile: Tile, window: tuple[int, int, int, int], margin: float,
    next_id: int, areas: _Areas,
) -> tuple[np.ndarray, int, dict]:
    """Merge one window's labels into the already written labels of the same window.

    Parameters
    ----------
    written : labels already in the output over ``window`` (global ids; not modified).
    new : the window's own segmentation (local ids).
    tile : the tile whose core the window surrounds.
    window : (y0, y1, x0, x1) of the window in slide coordinates.
    margin : pixels by which the core is grown for the centroid test.
    next_id : first free global id.
    areas : table of the written objects' areas (updated with the pasted ones).

    Returns
    -------
    (merged labels over the window, next free id, counts {"kept", "duplicates", "pasted"}).
    """
    y0, _, x0, _ = window
    area, cy, cx = _object_stats(new)
    cy, cx = cy + y0, cx + x0
    ids = np.arange(area.size)
    keep = (area > 0) & (ids > 0)
    keep &= (cy >= tile.y0 - margin) & (cy < tile.y1 + margin) & (cx >= tile.x0 - margin) & (cx < tile.x1 + margin)
    n_kept = int(keep.sum())
    # Overlap of kept new objects with written objects, from the sparse contingency of the two images.
    both = (written > 0) & (new > 0) & keep[new]
    duplicate = np.zeros(area.size, bool)
    if both.any():
        pairs, overlap = np.unique(
            np.stack([new[both].astype(np.int64), written[both].astype(np.int64)]), axis=1, return_counts=True
        )
        new_ids, old_ids = pairs
        dup = (overlap > DUPLICATE_OVERLAP * area[new_ids]) | (overlap > DUPLICATE_OVERLAP * areas.get(old_ids))
        duplicate[new_ids[dup]] = True
    paste = keep & ~duplicate
    lut = np.zeros(area.size, np.int64)
    n_paste = int(paste.sum())
    lut[paste] = np.arange(next_id, next_id + n_paste)
    mapped = lut[new]
    merged = np.where((written == 0) & (mapped > 0), mapped, written)
    if n_paste:
        pasted_ids = lut[paste]
        pasted_area = np.bincount(new[written == 0].ravel(), minlength=area.size)[paste]
        areas.set(pasted_ids, pasted_area)
    return merged, next_id + n_paste, {"kept": n_kept, "duplicates": int(duplicate.sum()), "pasted": n_paste}


def calibrate_segmenter(source, selection, tiles: list[Tile], shape_yx, cfg: Mapping, seed: int, segmenter=None):
    """Build (when None) and calibrate a backend on the slide's tile sample (the slide-wide statistics).

    The sample depends only on the tile grid, ``sample_tiles`` and ``seed``, so every shard job of a slide
    calibrates to the same thresholds as the unsharded run. Returns the calibrated segmenter.
    """
    segmenter = segmenter or build_segmenter(cfg)
    sampled = _sample_tiles(tiles, int(cfg["sample_tiles"]), seed)
    context = max(int(getattr(segmenter, "context", 0)), 0)

    def sample_windows():
        for tile in sampled:
            window = halo_window(tile, context, shape_yx)
            core = (slice(tile.y0 - window[0], tile.y1 - window[0]), slice(tile.x0 - window[2], tile.x1 - window[2]))
            yield _read_window(source, selection.indices, window), core

    segmenter.calibrate(sample_windows, len(selection.indices))
    segmenter.calibrated_on = len(sampled)
    return segmenter


def segment_windows(segmenter, source, indices: Sequence[int], windows: Sequence[tuple[int, int, int, int]],
                    batch_size: int = 1, threads: int = 1) -> Iterator[np.ndarray]:
    """Yield each window's own labels (local ids), in the order of ``windows``.

    Windows go to the backend in batches of ``batch_size``. With ``threads`` > 1 and a backend that can
    run batches side by side (``parallel_windows``: the classical one; Cellpose gets its threads through
    torch instead), batches run on that many forked worker processes with at most ``2 x threads``
    batches in flight (:func:`hemoprofile.io.ordered_map`; memory stays bounded, and the caller's
    stitching of finished windows overlaps with them). Threads were used before; they showed no
    speed-up on a loaded machine and were not re-measured idle, while workers gave 1.85x (bench/threads.py,
    bench/RESULTS.md). Results are
    still yielded in order and each batch is computed exactly as with one worker, so the output is
    bitwise the same.
    """
    batches = [list(windows[i:i + batch_size]) for i in range(0, len(windows), max(1, batch_size))]

    def run(batch):
        return segmenter.segment([_read_window(source, indices, w) for w in batch])

    parallel = threads > 1 and getattr(segmenter, "parallel_windows", False) and len(batches) > 1
    for labels in ordered_map(run, batches, threads if parallel else 1, processes=True):
        yield from labels


def segment_tiled(
    source,
    sink,
    channel_names: Sequence[str],
    segment_cfg: Mapping | None = None,
    tile_size: int = 512,
    seed: int = 0,
    segmenter=None,
    progress: Callable[[str], None] | None = print,
    source_name: str = "image",
    threads: int = 1,
    window_labels: Callable[[list[Tile], list[tuple[int, int, int, int]]], Iterable[np.ndarray]] | None = None,
) -> dict:
    """Segment an image tile by tile into ``sink`` with slide-wide unique ids (see the module doc).

    Parameters
    ----------
    source : (channel, row, column) array-like (numpy or zarr) supporting ``source[c, y0:y1, x0:x1]``.
    sink : (row, column) integer array-like, zero-filled, supporting slice reads and writes.
    channel_names : names of ``source``'s channels.
    segment_cfg : the ``segment`` config section.
    tile_size : tile edge (use the source's chunk edge so reads are chunk-aligned).
    seed : seed of the tile sample used for the slide-wide statistics.
    segmenter : a backend from :func:`hemoprofile.segment.segmenter.build_segmenter` (built when None).
    progress : called with a message about every 10 % of the tiles; None for silence.
    source_name : what the image is, for error messages.
    threads : threads segmenting windows (:func:`segment_windows`); the result does not depend on it.
    window_labels : when given, the windows' labels come from it (called with the tiles and their halo
        windows, it yields one label image per window in tile order: the shard jobs' stored windows,
        :mod:`hemoprofile.segment.shards`) and nothing is segmented here; only the stitching runs.

    Returns
    -------
    dict with ``n_objects``, ``tiles``, ``seconds``, ``megapixels_per_second``, ``duplicates_dropped``.
    """
    cfg = segment_settings(segment_cfg)
    say = progress or (lambda message: None)
    shape = tuple(int(s) for s in source.shape)
    if len(shape) != 3:
        raise ValueError(f"{source_name}: expected a (channel, row, column) image, got shape {shape}")
    if len(channel_names) != shape[0]:
        raise ValueError(f"{source_name}: {len(channel_names)} channel names for {shape[0]} channels")
    selection = select_channels(channel_names, cfg["channels"]["nucleus"], cfg["channels"]["cytoplasm"], source_name)
    shape_yx = shape[1:]
    halo = halo_pixels(cfg)
    margin = CORE_MARGIN_DIAMETERS * float(cfg["diameter"])
    tiles = list(iter_tiles(shape_yx, tile_size))
    windows = [halo_window(t, halo, shape_yx) for t in tiles]
    started = time.perf_counter()
    if window_labels is None:
        segmenter = calibrate_segmenter(source, selection, tiles, shape_yx, cfg, seed, segmenter)
        device = getattr(segmenter, "device", "cpu")
        say(f"{segmenter.name} on {device}: calibrated on {segmenter.calibrated_on} of {len(tiles)} tiles; "
            f"{len(tiles)} tiles of {tile_size} px, halo {halo} px, {threads} thread(s)")
        labels_iter = segment_windows(segmenter, source, selection.indices, windows,
                                      max(1, int(cfg["batch_tiles"])), threads)
    else:
        device = getattr(window_labels, "device", "shards")
        say(f"stitching {len(tiles)} tiles of {tile_size} px (halo {halo} px) from the shard jobs' windows")
        labels_iter = iter(window_labels(tiles, windows))

    areas = _Areas()
    next_id = 1
    duplicates = 0
    step = max(1, len(tiles) // 10)
    for done, (tile, window) in enumerate(zip(tiles, windows), start=1):
        new = next(labels_iter)
        y0, y1, x0, x1 = window
        written = np.asarray(sink[y0:y1, x0:x1])
        merged, next_id, counts = paste_tile_labels(written, new, tile, window, margin, next_id, areas)
        duplicates += counts["duplicates"]
        if counts["pasted"]:
            if next_id - 1 > np.iinfo(sink.dtype).max:
                raise OverflowError(f"{next_id - 1} objects do not fit the label dtype {sink.dtype}")
            sink[y0:y1, x0:x1] = merged.astype(sink.dtype)
        if done % step == 0 or done == len(tiles):
            elapsed = time.perf_counter() - started
            mp = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles[:done]) / 1e6
            say(f"{done}/{len(tiles)} tiles ({100 * done // len(tiles)} %), {next_id - 1} objects, "
                f"{mp / elapsed:.3f} MP/s")
    seconds = time.perf_counter() - started
    megapixels = shape_yx[0] * shape_yx[1] / 1e6
    return {
        "device": str(device),
        "n_objects": next_id - 1,
        "tiles": len(tiles),
        "halo": halo,
        "seconds": round(seconds, 3),
        "megapixels_per_second": round(megapixels / seconds, 4) if seconds > 0 else None,
        "duplicates_dropped": duplicates,
    }


def segment_slide(
    preprocessed_path,
    labels_path,
    segment_cfg: Mapping | None = None,
    seed: int = 0,
    segmenter=None,
    progress: Callable[[str], None] | None = print,
    pyramid_smallest: int | None = DEFAULT_SMALLEST,
    threads: int = 1,
    window_labels=None,
) -> dict:
    """Segment a preprocessed OME-Zarr slide into an OME-Zarr label image, tile by tile.

    Parameters
    ----------
    preprocessed_path : ``results/<slide>/preprocessed.zarr`` (c, y, x), channel names in its metadata.
    labels_path : ``results/<slide>/labels.zarr`` to write (atomically; replaced if present).
    segment_cfg : the ``segment`` config section.
    seed : seed of the tile sample for the slide-wide statistics (config ``seed``).
    segmenter : a backend to reuse across slides (built from ``segment_cfg`` when None).
    progress : called with progress messages; None for silence.
    pyramid_smallest : add 2x levels (nearest neighbour) for viewers until the long side is at most this
        many pixels (:func:`hemoprofile.io.pyramid.write_pyramid`); None writes level 0 only.
    threads : threads segmenting windows (CPU backends); labels are bitwise the same for any count.
    window_labels : stitch the shard jobs' windows instead of segmenting (see :func:`segment_tiled`;
        :func:`hemoprofile.segment.shards.stitch_shards` passes it).

    Returns
    -------
    dict of what was done (``n_objects``, timings), also stored with the backend, model, diameter and
    channels in ``labels.zarr``'s ``attributes["hemoprofile"]``.

    Example
    -------
    >>> segment_slide("results/s1/preprocessed.zarr", "results/s1/labels.zarr", {"backend": "classical"})  # doctest: +SKIP
    """
    cfg = segment_settings(segment_cfg)
    image = open_ome_zarr(preprocessed_path)
    if image.array.ndim != 3:
        raise ValueError(f"{preprocessed_path}: expected a (c, y, x) image, got shape {image.array.shape}")
    tile_size = int(image.array.chunks[-1])
    shape_yx = image.array.shape[1:]
    attributes = {
        "stage": "segment",
        "version": STAGE_VERSIONS.get("segment"),
        "source": str(preprocessed_path),
        "backend": cfg["backend"],
        "model": cfg["model"] if cfg["backend"] == "cellpose" else None,
        # the file's id: a bundled model keeps its name when its file is replaced
        "model_id": (model_id(model_file(cfg["model"]))
                     if cfg["backend"] == "cellpose" and is_model_file(cfg["model"]) else None),
        "diameter": float(cfg["diameter"]),
        "channels": {"nucleus": cfg["channels"]["nucleus"], "cytoplasm": list(cfg["channels"]["cytoplasm"]),
                     "combine": cfg["channels"]["combine"]},
        "normalisation": cfg["normalisation"],
        "halo": halo_pixels(cfg),
    }
    with atomic_output(labels_path) as tmp:
        sink = create_ome_zarr_labels(tmp, shape_yx, tile_size, pixel_size_um=image.pixel_size_um,
                                      name="labels", dtype="uint32", extra_attributes=attributes)
        summary = segment_tiled(image.array, sink, image.channel_names, cfg, tile_size, seed, segmenter, progress,
                                source_name=str(preprocessed_path), threads=threads, window_labels=window_labels)
        if pyramid_smallest:  # levels for viewers (every second pixel: ids stay exact); level 0 as written
            summary["pyramid_levels"] = len(write_pyramid(tmp, pyramid_smallest, method="nearest"))
        root = zarr.open_group(str(tmp), mode="r+")
        root.attrs["hemoprofile"] = {**attributes, **summary}
    if progress:
        progress(f"wrote {labels_path}: {summary['n_objects']} objects, {summary['megapixels_per_second']} MP/s")
    return {**attributes, **summary}
