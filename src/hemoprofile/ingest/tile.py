"""The tile stage: copy an input slide into an OME-Zarr image chunked one tile per chunk.

The output (``results/{slide}/image.zarr``) is the pipeline's single representation of a slide's raw
pixels, whatever the input format; every later stage reads it chunk by chunk. Tiling streams channel by
channel and tile by tile, so memory stays at about one tile plus the source's small decode cache.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

import hemoprofile
from hemoprofile.io import atomic_output, create_ome_zarr_image, iter_tiles, ordered_map, resolve_threads
from hemoprofile.io.pyramid import DEFAULT_SMALLEST, write_pyramid
from hemoprofile.io.slide_sources import SlideSource


#: Flat tiles listed by grid position ([row, col, value]) per channel in the provenance; more are counted.
MAX_FLAT_TILES_RECORDED = 100


def stored_dtype(dtype) -> np.dtype:
    """Return the dtype a slide is stored as: integers keep their own type, floats become float32.

    Raises
    ------
    ValueError
        For pixel types that are neither integer nor float (bool, complex, ...).
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return dtype
    if dtype.kind == "f":
        return np.dtype("float32")
    raise ValueError(f"pixel type {dtype} cannot be tiled (need an integer or float type)")


def tile_slide(
    source: SlideSource,
    out_path: str | os.PathLike,
    tile_size: int,
    compression_level: int = 5,
    progress: Callable[[str], None] | None = print,
    *,
    slide_name: str | None = None,
    pyramid_smallest: int | None = DEFAULT_SMALLEST,
    threads: int | None = 1,
) -> dict:
    """Write a slide as an OME-Zarr image (c, y, x) with one chunk per ``tile_size`` x ``tile_size`` tile.

    Each chunk is read from ``source`` and written exactly once; the output appears under ``out_path``
    only when complete (see :func:`hemoprofile.io.atomic_output`).

    Parameters
    ----------
    source : SlideSource
        An opened slide (:func:`hemoprofile.io.slide_sources.open_slide_source`); it is not closed here.
    out_path : str or PathLike
        The ``image.zarr`` folder to write; an existing one is replaced once the new one is complete.
    tile_size : int
        Chunk edge in pixels; edge tiles are smaller when the slide is not a multiple of it.
    compression_level : int
        Blosc-zstd level, 0 (none) to 9.
    progress : callable or None
        Receives progress lines (about every 10% of a channel's tiles, and a final throughput line).
    slide_name : str, optional
        Name used in progress lines and as the image name; defaults to the folder holding ``out_path``
        (``results/{slide}/image.zarr``).
    pyramid_smallest : int or None
        Add 2x mean-downsampled levels for viewers until the long side is at most this many pixels
        (:func:`hemoprofile.io.pyramid.write_pyramid`); None writes level 0 only. Level 0 is the same
        either way.
    threads : int, optional
        Threads that check, summarise and compress tiles (the source is read in one thread, in tile
        order); the output is byte for byte the same for any number (:func:`hemoprofile.io.ordered_map`).

    Returns
    -------
    dict
        ``path``, ``shape`` (c, y, x), ``dtype`` (stored), ``n_tiles`` (all channels), ``seconds``,
        ``megapixels`` (all channels) and ``megapixels_per_second`` (of level 0), ``pyramid_levels`` (shapes,
        level 0 first) and ``pyramid_seconds``.

    Blank and saturated frames do not stop the run: a channel's flat tiles (every pixel one value) are
    reported in a ``WARNING`` progress line, its pixels at an integer dtype's maximum in a progress line,
    and both are recorded in the output's provenance (``flat_tiles``: ``n`` and the ``first`` [row, col, value];
    ``saturated_pixels``: count per channel, None for float slides).

    Raises
    ------
    ValueError
        Naming the slide, channel and tile window when a float slide holds NaN or infinity (or values
        beyond float32), and for unsupported pixel types or tile sizes.

    Example
    -------
    >>> with open_slide_source("P01_S1.ome.tif", "ome-tiff", ["DAPI", "CK", "VIM", "CD45"]) as src:
    ...     tile_slide(src, "results/P01_S1/image.zarr", tile_size=512)  # doctest: +SKIP
    """
    tile_size = int(tile_size)
    threads = resolve_threads(threads)
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level must be 0..9, got {compression_level}")
    out_path = Path(out_path)
    name = slide_name or out_path.parent.name or Path(source.path).stem
    say = progress or (lambda _message: None)
    n_channels, height, width = source.shape
    dtype = stored_dtype(source.dtype)
    is_float = dtype.kind == "f"
    tiles = list(iter_tiles((height, width), tile_size))
    report_every = max(1, math.ceil(len(tiles) / 10))

    provenance = {
        "stage": "tile",
        "hemoprofile_version": hemoprofile.__version__,
        "source_path": str(source.path),
        "source_format": source.fmt,
        "source_dtype": str(np.dtype(source.dtype)),
        "dtype": str(dtype),
        "tile_size": tile_size,
        "channel_names": list(source.channel_names),
        "pixel_size_um": source.pixel_size_um,
    }
    if getattr(source, "file_channel_names", None):
        provenance["source_channel_names"] = list(source.file_channel_names)
    if getattr(source, "storage", None):
        provenance["source_storage"] = source.storage

    in_file = getattr(source, "file_channel_names", None)
    if in_file and [n.casefold() for n in in_file] != [n.casefold() for n in source.channel_names]:
        say(f"tile {name}: WARNING the file names its channels {list(in_file)}; the sample sheet's names "
            f"{list(source.channel_names)} are used (check that they are in file order)")
    start = time.perf_counter()
    with atomic_output(out_path) as tmp:
        array = create_ome_zarr_image(
            tmp,
            (n_channels, height, width),
            dtype,
            tile_size,
            source.channel_names,
            pixel_size_um=source.pixel_size_um,
            name=name,
            compression_level=compression_level,
            extra_attributes=provenance,
        )
        minima, maxima, flat_tiles, saturated = [], [], {}, {}
        saturation = np.iinfo(dtype).max if not is_float else None
        for c, channel in enumerate(source.channel_names):
            lo, hi = None, None
            flat, first_flat, n_saturated = [], None, 0

            def write_tile(job, c=c, channel=channel):
                # runs on a worker thread: checks, summarises and writes (compresses) one chunk
                t, data = job
                if is_float:
                    data = _finite_float32(data, source, channel, t)
                summary = _tile_summary(data, saturation)
                array[c, t.y0 : t.y1, t.x0 : t.x1] = data
                return t, summary

            # the source is read here, in tile order (its block cache is not thread-safe); the tiles are
            # summarised and written on `threads` threads and their summaries combined in tile order
            reads = ((t, source.read_region(c, t.y0, t.y1, t.x0, t.x1)) for t in tiles)
            for done, (t, summary) in enumerate(ordered_map(write_tile, reads, threads), start=1):
                if summary is not None:
                    tile_lo, tile_hi, tile_saturated = summary
                    lo = tile_lo if lo is None else min(lo, tile_lo)
                    hi = tile_hi if hi is None else max(hi, tile_hi)
                    if tile_lo == tile_hi:
                        flat.append([t.row, t.col, tile_lo.item()])
                        first_flat = first_flat or f"y[{t.y0}:{t.y1}] x[{t.x0}:{t.x1}]"
                    n_saturated += tile_saturated
                if done % report_every == 0 or done == len(tiles):
                    say(f"tile {name} {channel}: {done}/{len(tiles)} tiles")
            minima.append(lo.item())
            maxima.append(hi.item())
            flat_tiles[channel], saturated[channel] = flat, n_saturated
            _warn_blank_or_saturated(say, f"tile {name} {channel}", flat, first_flat, n_saturated, len(tiles),
                                     height * width)
        seconds = time.perf_counter() - start
        levels = write_pyramid(tmp, pyramid_smallest) if pyramid_smallest else [(n_channels, height, width)]
        pyramid_seconds = time.perf_counter() - start - seconds
        provenance.update(
            channel_min=dict(zip(source.channel_names, minima)),
            channel_max=dict(zip(source.channel_names, maxima)),
            flat_tiles={ch: {"n": len(f), "first": f[:MAX_FLAT_TILES_RECORDED]} for ch, f in flat_tiles.items()},
            saturated_pixels=saturated if saturation is not None else None,
            seconds=round(seconds, 3),
            pyramid_levels=len(levels),
            pyramid_seconds=round(pyramid_seconds, 3),
        )
        zarr.open_group(str(tmp), mode="r+").attrs["hemoprofile"] = provenance

    megapixels = n_channels * height * width / 1e6
    rate = megapixels / seconds if seconds > 0 else float("inf")
    if len(levels) > 1:
        say(f"tile {name}: pyramid of {len(levels)} levels down to {levels[-1][1:]} px in {pyramid_seconds:.1f} s")
    say(f"tile {name}: {megapixels:.1f} MP ({n_channels} channels) in {seconds:.1f} s, {rate:.1f} MP/s")
    return {
        "path": str(out_path),
        "shape": (n_channels, height, width),
        "dtype": str(dtype),
        "n_tiles": len(tiles) * n_channels,
        "seconds": seconds,
        "megapixels": megapixels,
        "megapixels_per_second": rate,
        "pyramid_levels": [tuple(level) for level in levels],
        "pyramid_seconds": pyramid_seconds,
    }


def _tile_summary(data: np.ndarray, saturation) -> tuple | None:
    """(min, max, pixels at ``saturation``) of one tile; None for an empty tile."""
    if not data.size:
        return None
    tile_lo, tile_hi = data.min(), data.max()
    n_saturated = 0
    if saturation is not None and tile_hi == saturation:
        n_saturated = int(np.count_nonzero(data == saturation))
    return tile_lo, tile_hi, n_saturated


def _warn_blank_or_saturated(say, where, flat, first_window, n_saturated, n_tiles, n_pixels) -> None:
    """Say which tiles of a channel are flat (blank or saturated frames) and how many pixels saturate.

    Neither stops the run: such frames happen on real scanners, and later stages cope (preprocess leaves
    flat tiles and saturated pixels out of its statistics; segmentation finds no cells in a flat area).
    """
    if flat:
        say(f"{where}: WARNING {len(flat)} of {n_tiles} tiles are flat (every pixel one value, a blank or "
            f"saturated frame); first at {first_window} = {flat[0][2]}")
    if n_saturated:
        say(f"{where}: {n_saturated} pixels ({100 * n_saturated / n_pixels:.3g}%) are saturated "
            f"(at the dtype's maximum)")


def _finite_float32(data: np.ndarray, source: SlideSource, channel: str, t) -> np.ndarray:
    """Return a float tile as float32, refusing NaN/inf (which would poison every later statistic)."""
    window = f"y[{t.y0}:{t.y1}] x[{t.x0}:{t.x1}]"
    finite = np.isfinite(data)
    if not finite.all():
        bad = data[~finite]
        kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in bad[:1000]})
        raise ValueError(
            f"{source.path}: channel {channel} tile {window} holds {bad.size} non-finite value(s) "
            f"({', '.join(kinds)}); clean the slide or convert it before tiling"
        )
    out = data.astype(np.float32, copy=False)
    if out is not data and not np.isfinite(out).all():
        raise ValueError(
            f"{source.path}: channel {channel} tile {window} holds values beyond the float32 range "
            f"(max |value| {np.abs(data).max():.3g})"
        )
    return out
