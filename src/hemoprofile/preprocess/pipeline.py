"""Per-channel intensity preprocessing of a slide, tile by tile, with output equal to whole-image output.

Each channel goes through four switchable steps, in this order:

1. ``percentile_clip`` — clip to the channel's global ``[p_low, p_high]`` percentiles (the upper one
   optionally floored at median + k background-noise sigmas, :func:`clip_range`).
2. ``normalise`` — rescale to [0, 1] by the global range (the percentile range when clipping, else the
   sampled min..max). When disabled, a fixed map with no statistics: integers divided by their dtype's
   maximum (uint16 / 65535, uint8 / 255), floats unchanged; both then clipped to [0, 1].
3. ``clahe`` — contrast-limited adaptive histogram equalisation (:func:`clahe_anchored`).
4. ``denoise`` — Chambolle total-variation denoising with a fixed iteration count.

Why the tiled result equals the whole-image result
--------------------------------------------------
* Steps 1–2 are per-pixel maps whose parameters come from statistics computed once per slide
  (:func:`sample_channel_statistics`), so every tile uses the same map.
* CLAHE is implemented here in numpy instead of calling ``skimage.exposure.equalize_adapthist``, which
  rescales each call's input by its own min/max and lays its block grid on the array it is given — both
  differ from tile to tile. Here the block grid is anchored at the slide's pixel (0, 0), histograms are
  integer counts, and interpolation weights depend on slide coordinates only, so a tile grown by
  :func:`required_halo` pixels reproduces the whole-image values bit for bit.
* TV denoising runs a fixed number of iterations (``eps=0`` disables skimage's early stop, see
  :func:`required_halo`), so each output pixel depends only on input pixels within ``iterations``
  pixels of it.

The workflow entry point is :func:`preprocess_slide` (``image.zarr`` -> ``preprocessed.zarr``); the pure
whole-image function is :func:`preprocess_channel`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
from skimage.restoration import denoise_tv_chambolle

from hemoprofile import io
from hemoprofile.config import section_defaults
from hemoprofile.io.patches import to_patch_dtype
from hemoprofile.preprocess.clahe import CLAHE_NBINS, clahe_anchored
from hemoprofile.preprocess.settings import required_halo, resolve_channel_settings, step_enabled, step_settings
from hemoprofile.preprocess.statistics import clip_range, normalise_range, sample_channel_statistics

#: Output dtypes ``preprocess_slide`` can write; integers hold [0, 1] scaled to their full range.
OUTPUT_DTYPES = ("uint16", "uint8", "float32")


def _scale_to_unit(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The fixed map of a disabled ``normalise``: integers by their dtype's maximum, floats as they are.

    In place on ``x``, the float32 copy of an image of ``dtype`` that ``percentile_clip`` may already
    have clipped to non-integer bounds, so :func:`hemoprofile.vocabulary.to_unit` (which divides only
    arrays that are still integers) cannot stand in for it.
    """
    if np.issubdtype(dtype, np.integer):
        x /= np.float32(np.iinfo(dtype).max)
    return x


def preprocess_channel(
    image_2d: np.ndarray,
    settings: dict,
    stats: dict,
    *,
    origin: tuple[int, int] = (0, 0),
    slide_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Preprocess one channel: percentile clip, normalise, CLAHE, TV denoise (each as enabled).

    Parameters
    ----------
    image_2d : (y, x) raw intensities (uint8, uint16, float32 ...); not modified.
    settings : the channel's resolved settings (:func:`resolve_channel_settings`).
    stats : the channel's slide statistics (:func:`sample_channel_statistics`), containing the
        percentiles ``percentile_clip`` names.
    origin, slide_shape : for tiled callers: slide coordinates of ``image_2d[0, 0]`` and the slide's
        (rows, cols), so CLAHE's block grid stays anchored to the slide. Defaults: ``image_2d`` is the
        whole slide.

    Returns
    -------
    float32 (y, x) array in [0, 1].

    Notes
    -----
    With ``normalise`` enabled and an empty range (hi <= lo — a constant channel, or percentiles that
    coincide) the channel has no contrast to show: the result is all zeros and no further step runs.
    Non-finite float inputs become 0 (NaN, -inf) or 1 (+inf) after normalisation.

    Example
    -------
    >>> img = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    >>> stats = {"min": 0.0, "max": 400.0, "percentiles": {}}
    >>> preprocess_channel(img, {"normalise": {"enabled": True}}, stats).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    img = np.asarray(image_2d)
    if img.ndim != 2:
        raise ValueError(f"preprocess_channel needs a 2-D image, got shape {img.shape}")
    x = img.astype(np.float32, copy=True)

    if step_enabled(settings, "percentile_clip"):
        lo, hi = clip_range(settings, stats)
        np.clip(x, np.float32(lo), np.float32(hi), out=x)

    bounds = normalise_range(settings, stats)
    if bounds is None:
        x = _scale_to_unit(x, img.dtype)
    else:
        lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
        if not hi > lo:
            return np.zeros(img.shape, dtype=np.float32)
        x -= lo
        x /= hi - lo  # a division (not a reciprocal) so that hi maps to exactly 1
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)

    if step_enabled(settings, "clahe"):
        c = step_settings(settings, "clahe")
        x = clahe_anchored(
            x, c["kernel_size"], float(c["clip_limit"]), nbins=int(c.get("nbins", CLAHE_NBINS)),
            origin=origin, slide_shape=slide_shape,
        )

    if step_enabled(settings, "denoise"):
        d = step_settings(settings, "denoise")
        weight, iterations = float(d["weight"]), int(d["iterations"])
        if weight <= 0 or iterations < 1:
            raise ValueError(f"denoise needs weight > 0 and iterations >= 1, got {weight}, {iterations}")
        # eps=0: never stop early, so every tile runs exactly `iterations` (see required_halo)
        x = denoise_tv_chambolle(x, weight=weight, max_num_iter=iterations, eps=0)

    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)


# --- slide ----------------------------------------------------------------------------------------------


def _needed_percentiles(settings: dict) -> list[float]:
    if not step_enabled(settings, "percentile_clip"):
        return []
    clip = step_settings(settings, "percentile_clip")
    return [float(clip["low"]), float(clip["high"])]


def preprocess_slide(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    preprocess_cfg: dict,
    seed: int = 0,
    progress: Callable[[str], object] | None = print,
    threads: int | None = 1,
) -> dict:
    """Preprocess every channel of an OME-Zarr image tile by tile into a new OME-Zarr image.

    Per channel: statistics from up to ``sample_tiles`` tiles (:func:`sample_channel_statistics`, the
    same ``seed`` for every channel), then for each tile of the input's chunk grid the tile grown by the
    channel's halo (:func:`required_halo`) is read, preprocessed (:func:`preprocess_channel`), cropped
    back and written once. Memory: one halo-grown tile and its temporaries (TV keeps ~5 float32 copies),
    whatever the slide's size. The output is written atomically (:func:`hemoprofile.io.atomic_output`).

    Parameters
    ----------
    in_path : ``image.zarr`` (c, y, x), chunk = tile, uint8/uint16/float32.
    out_path : ``preprocessed.zarr`` to write: same shape, chunks, channel names and pixel size; dtype
        ``preprocess_cfg["output_dtype"]`` (uint16 | uint8 | float32) holding [0, 1] (integers scaled
        to their full range).
    preprocess_cfg : the config's ``preprocess`` section (``output_dtype``, ``sample_tiles``,
        ``default``, ``channels``).
    seed : seed of the statistics' tile sample.
    progress : called with a line of text about every 10% of a channel's tiles and at the end
        (None: silent).
    threads : tiles preprocessed at once (numpy, scipy and skimage release the GIL in the array work);
        the output is byte for byte the same for any number (:func:`hemoprofile.io.ordered_map`), and
        memory is about ``2 x threads`` halo-grown tiles.

    Returns
    -------
    dict: ``path``, ``shape``, ``tile_size``, ``n_tiles``, ``output_dtype``, ``halo`` (max),
    ``halo_per_channel``, ``settings``, ``statistics``, ``normalise_range``, ``seconds``,
    ``seconds_per_channel``, ``megapixels_per_second`` (channel-pixels over all channels).

    ``attributes["hemoprofile"]`` of the output holds ``stage``, ``settings``, ``statistics``,
    ``normalise_range``, ``halo``, ``halo_per_channel``, ``output_dtype``, ``seed`` and the input's own
    ``hemoprofile`` attributes under ``input_attributes``.
    """
    say = progress or (lambda _msg: None)
    threads = io.resolve_threads(threads)
    started = time.perf_counter()
    image = io.open_ome_zarr(in_path)
    array = image.array
    if array.ndim != 3:
        raise ValueError(f"{in_path}: expected a (c, y, x) image, got shape {array.shape}")
    n_channels, height, width = (int(s) for s in array.shape)
    tile_size = int(array.chunks[-1])
    defaults = section_defaults("preprocess")  # for a section given without these keys
    out_dtype = np.dtype(preprocess_cfg.get("output_dtype", defaults["output_dtype"]))
    if out_dtype.name not in OUTPUT_DTYPES:
        raise ValueError(f"preprocess.output_dtype must be one of {OUTPUT_DTYPES}, got {out_dtype.name}")
    names = list(image.channel_names)
    settings = resolve_channel_settings(preprocess_cfg, names)
    sample_tiles = int(preprocess_cfg.get("sample_tiles", defaults["sample_tiles"]))

    statistics, ranges, halos = {}, {}, {}
    for ci, name in enumerate(names):
        statistics[name] = sample_channel_statistics(
            array, ci, tile_size, sample_tiles, seed, percentiles=_needed_percentiles(settings[name])
        )
        bounds = normalise_range(settings[name], statistics[name])
        ranges[name] = None if bounds is None else [bounds[0], bounds[1]]
        halos[name] = required_halo({name: settings[name]})
        if bounds is not None and not bounds[1] > bounds[0]:
            say(f"preprocess: WARNING channel {name} has an empty normalise range {bounds} "
                f"(constant={statistics[name]['constant']}); it is written as zeros")
    attributes = {
        "stage": "preprocess",
        "settings": settings,
        "statistics": statistics,
        "normalise_range": ranges,
        "halo": max(halos.values(), default=0),
        "halo_per_channel": halos,
        "output_dtype": out_dtype.name,
        "seed": int(seed),
        "input_attributes": image.attributes,
    }
    say(f"preprocess: {in_path} {n_channels}x{height}x{width} {np.dtype(array.dtype).name}, "
        f"tile {tile_size}, halo per channel {halos}")

    tiles = list(io.iter_tiles((height, width), tile_size))
    report_every = max(1, math.ceil(len(tiles) / 10))
    seconds = {}
    with io.atomic_output(out_path) as tmp:
        out = io.create_ome_zarr_image(
            tmp, array.shape, out_dtype, tile_size, names, pixel_size_um=image.pixel_size_um,
            name="preprocessed", extra_attributes=attributes,
        )
        for ci, name in enumerate(names):
            channel_started = time.perf_counter()

            def preprocess_tile(tile, ci=ci, name=name):
                # runs in a worker (a forked process when threads > 1: CLAHE holds the GIL for much of a
                # tile): read the halo window, preprocess it, write the tile's chunk
                wy0, wy1, wx0, wx1 = io.halo_window(tile, halos[name], (height, width))
                window = np.asarray(array[ci, wy0:wy1, wx0:wx1])
                result = preprocess_channel(
                    window, settings[name], statistics[name], origin=(wy0, wx0), slide_shape=(height, width)
                )
                core = result[tile.y0 - wy0 : tile.y1 - wy0, tile.x0 - wx0 : tile.x1 - wx0]
                out[ci, tile.y0 : tile.y1, tile.x0 : tile.x1] = to_patch_dtype(core, out_dtype.name)

            # each tile is its own chunk, written once from the same window whatever thread runs it
            for done, _ in enumerate(io.ordered_map(preprocess_tile, tiles, threads, processes=True), start=1):
                if done % report_every == 0 or done == len(tiles):
                    say(f"preprocess: {name} {done}/{len(tiles)} tiles")
            seconds[name] = time.perf_counter() - channel_started
            say(f"preprocess: {name} done, {height * width / 1e6 / max(seconds[name], 1e-9):.2f} MP/s")
    total = time.perf_counter() - started
    rate = n_channels * height * width / 1e6 / max(total, 1e-9)
    say(f"preprocess: {n_channels} channels x {height * width / 1e6:.2f} MP in {total:.1f} s "
        f"({rate:.2f} MP/s)")
    return {
        "path": str(out_path),
        "shape": [n_channels, height, width],
        "tile_size": tile_size,
        "n_tiles": len(tiles),
        "output_dtype": out_dtype.name,
        "halo": attributes["halo"],
        "halo_per_channel": halos,
        "settings": settings,
        "statistics": statistics,
        "normalise_range": ranges,
        "seconds": total,
        "seconds_per_channel": seconds,
        "megapixels_per_second": rate,
    }
